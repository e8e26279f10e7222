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

    /// Command: store the prices, and raise one `PricesRecorded` per symbol.
    public func recordPrices(_ command: RecordPrices, context: HandlerContext) async throws {
        try await store.write(context) { tx in
            for symbol in command.prices.keys.sorted() {
                let points = command.prices[symbol]!
                try tx.savePrices(points, of: symbol)
                try context.raise(PricesRecorded(symbol: symbol, firstDate: points.first!.date,
                                                 lastDate: points.last!.date, count: points.count))
            }
        }
    }

    /// Event: recompute the symbol's returns from the event's first date on (from the prices
    /// on record when the transaction runs, so handlers of one symbol may run in any order),
    /// store those that changed and raise `ReturnsCalculated` with them (possibly none). A
    /// redelivered event (in the inbox) changes nothing and raises nothing.
    public func pricesRecorded(_ event: PricesRecorded, context: HandlerContext) async throws {
        let applied = try await store.write(context) { tx in
            let prices = try tx.prices(of: event.symbol, from: event.firstDate)
            let computed = ReturnsMath.dailyReturns(prices).filter { $0.date >= event.firstDate }
            let stored = try tx.simpleReturns(of: event.symbol, from: event.firstDate)
            let changed = computed.filter { stored[$0.date] != $0.simple }
            try tx.saveReturns(changed, of: event.symbol)
            try context.raise(ReturnsCalculated(symbol: event.symbol,
                                                returns: changed.map { DatedValue(date: $0.date, value: $0.simple) }))
        }
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
        try registry.handle(RecordPrices.self, raises: [PricesRecorded.self]) { command, context in
            try await recordPrices(command, context: context)
        }
    }

    /// Registers the worker's event handlers.
    public func registerEvents(_ registry: inout HandlerRegistry) {
        registry.on(PricesRecorded.self, raises: [ReturnsCalculated.self]) { event, context in
            try await pricesRecorded(event, context: context)
        }
    }
}
