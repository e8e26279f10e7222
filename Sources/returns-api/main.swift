import Foundation
import Returns
import ServiceRuntime

// returns-api: REST over libmicrohttpd; RecordPrices → outbox → RabbitMQ.
exit(await APIRuntime.run(ReturnsService.self))
