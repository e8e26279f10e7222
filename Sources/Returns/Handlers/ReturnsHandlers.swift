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
    /// on record when the transaction runs), store those that changed and raise
    /// `ReturnsCalculated` with them (possibly none). A redelivered event (in the inbox)
    /// changes nothing and raises nothing.
    ///
    /// A batch is applied in one transaction: each symbol's returns are recomputed once, from
    /// the earliest first date of its events, and each event, in delivery order, carries the
    /// changed returns from its own first date on that no earlier event of its symbol carried —
    /// what handling them one after the other would raise.
    public func pricesRecorded(_ batch: [HandledEvent<PricesRecorded>]) async throws {
        let applied = try await store.write(batch.map(\.context)) { tx, fresh in
            // Each symbol of the batch once, with the earliest first date of its events (one
            // lookup per event; arrays by slot after that: a batch of a few hundred symbols
            // spent a third of its transaction in dictionaries of dates and symbols).
            var slotOf: [String: Int] = [:]
            slotOf.reserveCapacity(fresh.count)
            var symbols: [(name: String, first: CalendarDate)] = []
            var slots = [Int](repeating: -1, count: batch.count)
            for index in fresh {
                let event = batch[index].event
                if let slot = slotOf[event.symbol] {
                    symbols[slot].first = min(symbols[slot].first, event.firstDate)
                    slots[index] = slot
                } else {
                    slots[index] = symbols.count
                    slotOf[event.symbol] = symbols.count
                    symbols.append((event.symbol, event.firstDate))
                }
            }
            // In symbol order (neighbouring pages of the tables), the changed returns of each.
            var changed = [[DailyReturn]](repeating: [], count: symbols.count)
            for slot in symbols.indices.sorted(by: { symbols[$0].name < symbols[$1].name }) {
                let (symbol, first) = symbols[slot]
                let rows = try tx.pricesAndReturns(of: symbol, from: first)
                // Return `i` is for the date of price `i + 1`, whose stored return is beside it.
                let computed = ReturnsMath.dailyReturns(rows.map(\.0))
                var diff: [DailyReturn] = []
                for (i, r) in computed.enumerated() where r.date >= first && rows[i + 1].1 != r.simple { diff.append(r) }
                try tx.saveReturns(diff, of: symbol)
                changed[slot] = diff
            }
            // Dates an earlier event of the symbol carried (only when a symbol comes twice).
            var carried = [Set<CalendarDate>](repeating: [], count: symbols.count)
            let repeats = symbols.count < fresh.count
            for index in fresh {
                let event = batch[index].event
                let slot = slots[index]
                let mine = changed[slot].filter { $0.date >= event.firstDate && !carried[slot].contains($0.date) }
                if repeats { carried[slot].formUnion(mine.map(\.date)) }
                try batch[index].context.raise(ReturnsCalculated(
                    symbol: event.symbol, returns: mine.map { DatedValue(date: $0.date, value: $0.simple) }))
            }
        }
        guard logger.logLevel <= .info else { return }
        let fresh = Set(applied)
        for (index, item) in batch.enumerated() {
            if fresh.contains(index) {
                logger.info("returns calculated", metadata: [
                    "symbol": "\(item.event.symbol)", "first_date": "\(item.event.firstDate)",
                    "last_date": "\(item.event.lastDate)", "prices": "\(item.event.count)",
                ])
            } else {
                logger.info("event already handled; nothing changed", metadata: ["symbol": "\(item.event.symbol)"])
            }
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
        registry.onBatch(PricesRecorded.self, raises: [ReturnsCalculated.self]) { batch in
            try await pricesRecorded(batch)
        }
    }
}
