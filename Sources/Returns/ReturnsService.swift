import EventCatalog
import Foundation
import HTTPServer
import Logging
import MessageBus
import ServiceRuntime

/// The returns service: prices in, daily returns out.
///
/// - api: `POST /prices` (command `RecordPrices` → `returns.events.prices_recorded`),
///   `GET /symbols`, `GET /prices/{symbol}`, `GET /returns/{symbol}`.
/// - worker: consumes `returns.events.prices_recorded`, computes the daily returns and
///   raises `returns.events.returns_calculated`.
public struct ReturnsService: ServiceModule {
    public static let name = "returns"

    let store: ReturnsStore
    let handlers: ReturnsHandlers

    public init(database: ServiceDatabase, logger: Logger) {
        store = ReturnsStore(database: database)
        handlers = ReturnsHandlers(store: store, logger: logger)
    }

    public static let operationFailedEvent: (any OperationFailedEvent.Type)? = ReturnsOperationFailed.self

    public static var openAPIDocument: [UInt8] {
        OpenAPIRoute.load(Bundle.module.url(forResource: "openapi", withExtension: "json"))
    }

    public static var storeMigrations: StoreMigrations { ReturnsStore.migrations }

    public func registerCommandHandlers(_ registry: inout HandlerRegistry) throws {
        try handlers.registerCommands(&registry)
    }

    public func addRoutes(to router: inout Router, bus: MessageBus) {
        ReturnsRoutes(store: store, bus: bus).add(to: &router)
    }

    public func registerEventHandlers(_ registry: inout HandlerRegistry) throws {
        handlers.registerEvents(&registry)
    }
}
