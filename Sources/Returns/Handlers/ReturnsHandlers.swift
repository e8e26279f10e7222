import EventCatalog
import Logging
import MessageBus

/// The returns service's handlers: the same code whether the api or the worker runs them.
public struct ReturnsHandlers: Sendable {
    let store: ReturnsStore
    let logger: Logger

    public init(store: ReturnsStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    /// Command: store prices, raise `PricesRecorded` per symbol.
    public func recordPrices(_ command: RecordPrices, context: HandlerContext) async throws {
        try await store.record(command, context: context)
    }

    /// Event: recompute the symbol's returns, raise `ReturnsCalculated`.
    public func pricesRecorded(_ event: PricesRecorded, context: HandlerContext) async throws {
        let applied = try await store.recalculate(after: event, context: context)
        if applied {
            logger.info("returns calculated", metadata: [
                "symbol": "\(event.symbol)", "first_date": "\(event.firstDate)", "last_date": "\(event.lastDate)",
                "prices": "\(event.count)",
            ])
        } else {
            logger.info("event already handled; nothing changed", metadata: ["symbol": "\(event.symbol)"])
        }
    }

    /// Registers the api's command handlers.
    public func registerCommands(_ registry: inout HandlerRegistry) throws {
        try registry.handle(RecordPrices.self) { command, context in
            try await recordPrices(command, context: context)
        }
    }

    /// Registers the worker's event handlers.
    public func registerEvents(_ registry: inout HandlerRegistry) {
        registry.on(PricesRecorded.self) { event, context in
            try await pricesRecorded(event, context: context)
        }
    }
}
