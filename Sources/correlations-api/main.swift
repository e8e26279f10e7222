import Correlations
import Foundation
import ServiceRuntime

// correlations-api: REST over libmicrohttpd; AddWindow → outbox → RabbitMQ; matrix reads.
exit(await APIRuntime.run(CorrelationsService.self))
