import Correlations
import Foundation
import ServiceRuntime

// correlations-worker: consumes returns_calculated and window_added, computes correlations.
exit(await WorkerCommands.main(CorrelationsService.self))
