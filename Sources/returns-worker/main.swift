import Foundation
import Returns
import ServiceRuntime

// returns-worker: consumes returns.events.prices_recorded and computes daily returns;
// `returns-worker replay-dead-letters` and `replay-unroutable` are its operator commands.
exit(await WorkerCommands.main(ReturnsService.self))
