import Dispatch
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
            var known = try tx.symbolCount()
            var lastDay: [String: Int32?] = [:]
            var seen = [(asOf: Int32?, others: Int)](repeating: (nil, 0), count: batch.count)
            for index in fresh {
                let event = batch[index].event
                let before = try lastDay[event.symbol] ?? tx.lastDay(of: event.symbol)
                if try tx.saveReturns(event.returns, of: event.symbol) { known += 1 }
                let after = event.returns.map { Int32($0.date.daysSinceEpoch) }.max().map { max($0, before ?? $0) } ?? before
                lastDay[event.symbol] = after
                seen[index] = (after, known - 1)
            }
            let tracked = try tx.trackedWindows()
            let changed = Set(fresh.map { batch[$0].event }.filter { !$0.returns.isEmpty }.map(\.symbol))
            if !changed.isEmpty {
                let view = try View(tx, windows: tracked)
                let moved = view.symbols.map { changed.contains($0) }
                for window in tracked { try view.update(window: window, moved: moved, tx) }
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
            let view = try View(tx, windows: try tx.trackedWindows())
            try view.update(window: event.window, moved: view.symbols.map { _ in true }, tx)
            let n = view.symbols.count
            let asOf = view.entries.compactMap(\.series.lastDay).max().map { CalendarDate(daysSinceEpoch: Int($0)) }
            let updated = CorrelationsUpdated(symbols: view.symbols.sorted(), windows: [event.window], asOf: asOf,
                                              pairs: n * (n - 1) / 2)
            try context.raise(updated)
            result.withLock { $0 = updated }
        }
        return result.withLock { $0 }
    }

    /// Every symbol of the projection by stored index, with its latest returns: what the
    /// stored rows of a window are computed from.
    private struct View {
        let symbols: [String]
        let entries: [SeriesCache.Entry]

        init(_ tx: CorrelationsTransaction, windows: [Int]) throws {
            symbols = try tx.symbolsByIndex()
            let all = try tx.latestSeries(windows: windows)
            entries = symbols.map { all[$0] ?? SeriesCache.Entry(series: ReturnSeries(), complete: true) }
        }

        /// Recomputes, for `window`, every stored pair that includes a symbol whose `moved`
        /// flag is set, and stores the rows holding them (see `CorrelationRow`): the row of a
        /// moved symbol whole (its diagonal too), a later row in the cells of the moved symbols.
        func update(window: Int, moved: [Bool], _ tx: CorrelationsTransaction) throws {
            guard let first = moved.firstIndex(of: true) else { return }
            let fast = WindowPairs(window: window, series: entries.map(\.series))
            let movedIndices = moved.indices.filter { moved[$0] }
            // The rows to write: a moved symbol's whole (its diagonal too), a later one's
            // stored row with the cells of the moved symbols to fill.
            var rows = try (first..<symbols.count).map { i in
                moved[i] ? CorrelationRow(count: i + 1) : try tx.row(window: window, index: i) ?? CorrelationRow(count: i + 1)
            }
            // The pairs the unit vectors settle, on two threads (rows alternate between them:
            // each writes only its own rows); the others after, one by one.
            let entries = self.entries
            let left = rows.withUnsafeMutableBufferPointer { buffer -> [(Int, Int)] in
                let base = UInt(bitPattern: buffer.baseAddress)
                let lists = Mutex<[[(Int, Int)]]>([])
                DispatchQueue.concurrentPerform(iterations: 2) { part in
                    let rows = UnsafeMutablePointer<CorrelationRow>(bitPattern: base)!
                    var unsettled: [(Int, Int)] = []
                    for i in Swift.stride(from: first + part, to: symbols.count, by: 2) {
                        func fill(_ j: Int) {
                            if let c = fast.aligned(i, j) { rows[i - first][j] = c } else { unsettled.append((i, j)) }
                        }
                        if moved[i] {
                            for j in 0..<i { fill(j) }
                            rows[i - first][i] = CorrelationMath.diagonal(entries[i].series, window: window)
                        } else {
                            for j in movedIndices {
                                if j >= i { break }
                                fill(j)
                            }
                        }
                    }
                    lists.withLock { $0.append(unsettled) }
                }
                return lists.withLock { $0.flatMap { $0 } }
            }
            var whole: [String: ReturnSeries] = [:]
            for (i, j) in left {
                rows[i - first][j] = try CorrelationsHandlers.pair(symbols[i], entries[i], symbols[j], entries[j], window, &whole, tx)
            }
            for (offset, row) in rows.enumerated() { try tx.saveRow(window: window, index: first + offset, row) }
        }
    }

    /// The pair's correlation from the latest returns; from the whole series (read once per
    /// handler into `whole`) when those do not settle it (see `CorrelationMath.pair`).
    fileprivate static func pair(_ x: String, _ a: SeriesCache.Entry, _ y: String, _ b: SeriesCache.Entry, _ window: Int,
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
