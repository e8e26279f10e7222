import EventCatalog
import Logging
import MessageBus
import Synchronization

/// The correlations service's handlers, the same code in the api and the worker.
public struct CorrelationsHandlers: Sendable {
    let store: CorrelationsStore
    let logger: Logger

    public init(store: CorrelationsStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    /// Command: track the window and raise `WindowAdded` (also when it was tracked already,
    /// so the operation resolves with a fresh backfill).
    public func addWindow(_ command: AddWindow, context: HandlerContext) async throws {
        try await store.write(context) { tx in
            try tx.track(window: command.window)
            try context.raise(WindowAdded(window: command.window))
        }
    }

    /// Event: store the symbol's returns in the projection, recompute every pair that includes
    /// the symbol for every tracked window, and raise `CorrelationsUpdated`; `nil` when the
    /// event was handled before.
    @discardableResult
    public func returnsCalculated(_ event: ReturnsCalculated, context: HandlerContext) async throws -> CorrelationsUpdated? {
        try await returnsCalculated([HandledEvent(event: event, context: context)])[0]
    }

    /// A batch of `returns_calculated`, in one transaction: the returns go into the projection
    /// in delivery order, then every pair that includes a symbol with new returns is recomputed
    /// once per tracked window (not once per event), from the projection as the batch leaves
    /// it — what handling the events one after the other would leave stored. Each event raises
    /// its own `CorrelationsUpdated` (its symbol's pairs). One result per event; `nil` for an
    /// event handled before.
    @discardableResult
    public func returnsCalculated(_ batch: [HandledEvent<ReturnsCalculated>]) async throws -> [CorrelationsUpdated?] {
        let results = Mutex([CorrelationsUpdated?](repeating: nil, count: batch.count))
        try await store.write(batch.map(\.context)) { tx, fresh in
            // Each event's `as_of` and pair count as handling them one by one gives: the
            // symbol's last day and the symbols known once its returns are stored.
            var known = try tx.knownSymbols()
            var lastDay: [String: Int32?] = [:]
            var seen = [(asOf: Int32?, others: Int)](repeating: (nil, 0), count: batch.count)
            for index in fresh {
                let event = batch[index].event
                let before = try lastDay[event.symbol] ?? tx.lastDay(of: event.symbol)
                try tx.saveReturns(event.returns, of: event.symbol)
                known.insert(event.symbol)
                let after = event.returns.map { Int32($0.date.daysSinceEpoch) }.max().map { max($0, before ?? $0) } ?? before
                lastDay[event.symbol] = after
                seen[index] = (after, known.count - 1)
            }
            let tracked = try tx.trackedWindows()
            let all = try tx.latestSeries(windows: tracked)
            let changed = Set(fresh.map { batch[$0].event }.filter { !$0.returns.isEmpty }.map(\.symbol))
            var whole: [String: ReturnSeries] = [:]
            let empty = SeriesCache.Entry(series: ReturnSeries(), complete: true)
            for window in tracked {
                for symbol in changed.sorted() {
                    let mine = all[symbol] ?? empty
                    for (other, theirs) in all where other != symbol {
                        // A pair of two changed symbols: once.
                        if other < symbol, changed.contains(other) { continue }
                        try tx.savePair(window: window, symbol, other,
                                        Self.pair(symbol, mine, other, theirs, window, &whole, tx))
                    }
                }
            }
            var updates = [CorrelationsUpdated?](repeating: nil, count: batch.count)
            for index in fresh {
                let event = batch[index].event
                let windows = event.returns.isEmpty ? [] : tracked
                let updated = CorrelationsUpdated(
                    symbols: [event.symbol], windows: windows,
                    asOf: seen[index].asOf.map { CalendarDate(daysSinceEpoch: Int($0)) },
                    pairs: seen[index].others * windows.count)
                try batch[index].context.raise(updated)
                updates[index] = updated
            }
            results.withLock { $0 = updates }
        }
        return results.withLock { $0 }
    }

    /// Event: compute every pair of every symbol for the new window (a backfill) and raise
    /// `CorrelationsUpdated`; `nil` when the event was handled before.
    @discardableResult
    public func windowAdded(_ event: WindowAdded, context: HandlerContext) async throws -> CorrelationsUpdated? {
        let result = Mutex<CorrelationsUpdated?>(nil)
        try await store.write(context) { tx in
            try tx.track(window: event.window)
            let all = try tx.latestSeries(windows: try tx.trackedWindows()).sorted { $0.key < $1.key }
            var pairs = 0
            var whole: [String: ReturnSeries] = [:]
            for i in 0..<all.count {
                for j in (i + 1)..<all.count {
                    try tx.savePair(window: event.window, all[i].key, all[j].key,
                                    Self.pair(all[i].key, all[i].value, all[j].key, all[j].value, event.window, &whole, tx))
                    pairs += 1
                }
            }
            let asOf = all.compactMap(\.value.series.lastDay).max().map { CalendarDate(daysSinceEpoch: Int($0)) }
            let updated = CorrelationsUpdated(symbols: all.map(\.key), windows: [event.window], asOf: asOf, pairs: pairs)
            try context.raise(updated)
            result.withLock { $0 = updated }
        }
        return result.withLock { $0 }
    }

    /// The pair's correlation from the latest returns; from the whole series (read once per
    /// handler into `whole`) when those do not settle it (see `CorrelationMath.pair`).
    private static func pair(_ x: String, _ a: SeriesCache.Entry, _ y: String, _ b: SeriesCache.Entry, _ window: Int,
                             _ whole: inout [String: ReturnSeries], _ tx: CorrelationsTransaction) throws -> PairCorrelation {
        if let c = CorrelationMath.pair(a.series, complete: a.complete, b.series, complete: b.complete, window: window) {
            return c
        }
        func all(_ symbol: String) throws -> ReturnSeries {
            if let loaded = whole[symbol] { return loaded }
            let loaded = try tx.wholeSeries(of: symbol)
            whole[symbol] = loaded
            return loaded
        }
        return CorrelationMath.pair(try all(x), try all(y), window: window)
    }

    /// Registers the api's command handlers.
    public func registerCommands(_ registry: inout HandlerRegistry) throws {
        try registry.handle(AddWindow.self, raises: [WindowAdded.self]) { command, context in
            try await addWindow(command, context: context)
        }
    }

    /// Registers the worker's event handlers.
    public func registerEvents(_ registry: inout HandlerRegistry) {
        registry.onBatch(ReturnsCalculated.self, raises: [CorrelationsUpdated.self]) { batch in
            let updates = try await returnsCalculated(batch)
            guard logger.logLevel <= .info else { return }
            for (item, updated) in zip(batch, updates) {
                if let updated {
                    logger.info("correlations updated", metadata: [
                        "symbol": "\(item.event.symbol)", "returns": "\(item.event.returns.count)",
                        "windows": "\(updated.windows)", "pairs": "\(updated.pairs)",
                    ])
                } else {
                    logger.info("event already handled; nothing changed", metadata: ["symbol": "\(item.event.symbol)"])
                }
            }
        }
        registry.on(WindowAdded.self, raises: [CorrelationsUpdated.self]) { event, context in
            if let updated = try await windowAdded(event, context: context) {
                logger.info("window backfilled", metadata: ["window": "\(event.window)", "pairs": "\(updated.pairs)"])
            } else {
                logger.info("event already handled; nothing changed", metadata: ["window": "\(event.window)"])
            }
        }
    }
}
