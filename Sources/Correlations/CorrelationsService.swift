import EventCatalog
import Foundation
import GRDB
import HTTPServer
import Logging
import MessageBus
import ServiceRuntime

/// The correlations service: returns in, rolling Pearson correlation matrices out.
///
/// - api: `POST /windows` (command `AddWindow` → `correlations.events.window_added`),
///   `GET /correlations?symbols=A,B&window=N`, `GET /correlations/{a}/{b}?window=N`.
/// - worker: consumes `returns.events.returns_calculated` (its own projection of every
///   symbol's returns) and `correlations.events.window_added`, and raises
///   `correlations.events.correlations_updated` for each.
public struct CorrelationsService: ServiceModule {
    public static let name = "correlations"

    public static let operationFailedEvent: (any OperationFailedEvent.Type)? = CorrelationsOperationFailed.self

    let store: CorrelationsStore
    let handlers: CorrelationsHandlers

    public init(database: ServiceDatabase, logger: Logger) {
        store = CorrelationsStore(database: database)
        handlers = CorrelationsHandlers(store: store, logger: logger)
    }

    public static var openAPIDocument: [UInt8] {
        OpenAPIRoute.load(Bundle.module.url(forResource: "openapi", withExtension: "json"))
    }

    public static func migrate(_ migrator: inout DatabaseMigrator) {
        CorrelationsStore.migrate(&migrator)
    }

    public func registerCommandHandlers(_ registry: inout HandlerRegistry) throws {
        try handlers.registerCommands(&registry)
    }

    public func addRoutes(to router: inout Router, bus: MessageBus) {
        CorrelationsRoutes(store: store, bus: bus).add(to: &router)
    }

    public func registerEventHandlers(_ registry: inout HandlerRegistry) throws {
        handlers.registerEvents(&registry)
    }
}
