import EventCatalog
import Foundation
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

    /// 16 KiB pages: a row of the view (`CorrelationRow`, up to 8 bytes per symbol when
    /// compact) fits in one page up to about 2,000 symbols instead of spilling into overflow
    /// pages past 500, and a backfill's commit writes a quarter as many WAL frames (measured:
    /// the rows of a 500-symbol window written in about 3 ms instead of 5).
    public static let databasePageSize: Int? = 16_384

    let store: CorrelationsStore
    let handlers: CorrelationsHandlers

    public init(database: ServiceDatabase, logger: Logger) {
        store = CorrelationsStore(database: database)
        handlers = CorrelationsHandlers(store: store, logger: logger)
    }

    public static var openAPIDocument: [UInt8] {
        OpenAPIRoute.load(Bundle.module.url(forResource: "openapi", withExtension: "json"))
    }

    public static var storeMigrations: StoreMigrations { CorrelationsStore.migrations }

    /// The projection stores the returns each `returns_calculated` carries: a later event
    /// for a date carries its newer value (the returns service recomputes a return when an
    /// earlier price comes), so events are applied in publish order — by one worker replica
    /// at a time. Competing replicas each taking a batch could apply an older value last.
    public static let singleActiveConsumer = true

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
