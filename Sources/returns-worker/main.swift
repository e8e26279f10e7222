import Foundation
import Returns
import ServiceRuntime

// returns-worker: consumes returns.events.prices_recorded and computes daily returns.
exit(await WorkerRuntime.run(ReturnsService.self))
