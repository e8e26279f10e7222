import Dispatch
#if canImport(Glibc)
import Glibc
#endif
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
            let count = symbols.count - first
            var stored = [CorrelationRow?](repeating: nil, count: count)
            for i in first..<symbols.count where !moved[i] {
                var row = try tx.row(window: window, index: i) ?? CorrelationRow(count: i + 1)
                if row.count <= i { row[i] = row[i] }
                stored[i - first] = row
            }
            // The pairs the unit vectors settle are computed on two threads, this one and a
            // helper, a row at a time in order; this one stores each row as soon as it and
            // the rows before it are done (after the pairs the vectors leave, which read the
            // database), so the writes overlap the arithmetic.
            let entries = self.entries
            let work = RowWork(rows: stored) { i, row, unsettled in
                if moved[i] {
                    row = CorrelationRow(count: i + 1)
                    row.withUnsafeCells { cells in
                        fast.fill(row: i, columns: 0..<i, into: cells, unsettled: &unsettled)
                        cells[i] = CorrelationMath.diagonal(entries[i].series, window: window)
                    }
                } else {
                    row.withUnsafeCells { cells in
                        fast.fill(row: i, columns: movedIndices.lazy.prefix { $0 < i }, into: cells, unsettled: &unsettled)
                    }
                }
            }
            var whole: [String: ReturnSeries] = [:]
            try work.run(first: first) { i, row, unsettled in
                for (_, j) in unsettled {
                    row[j] = try CorrelationsHandlers.pair(symbols[i], entries[i], symbols[j], entries[j], window, &whole, tx)
                }
                try tx.saveRow(window: window, index: i, row)
            }
        }
    }

    /// The rows of one window's update, computed on two threads — the caller's and a helper —
    /// and handed back to the caller in order (see `View.update`). Rows are claimed one at a
    /// time from a shared counter; each is written only by the thread that claimed it, and
    /// read by the caller only once marked done (under the lock that marks it).
    private final class RowWork: @unchecked Sendable {
        typealias Compute = @Sendable (_ index: Int, _ row: inout CorrelationRow, _ unsettled: inout [(Int, Int)]) -> Void
        private let rows: UnsafeMutablePointer<CorrelationRow>
        private let unsettled: UnsafeMutablePointer<[(Int, Int)]>
        private let count: Int
        private let compute: Compute
        private let next = Atomic<Int>(0)
        private let done: Mutex<[Bool]>

        /// `stored`: the rows read from the database (`nil`: made by `compute`).
        init(rows stored: [CorrelationRow?], compute: @escaping Compute) {
            count = stored.count
            rows = .allocate(capacity: count)
            rows.initialize(from: stored.map { $0 ?? CorrelationRow(count: 0) }, count: count)
            unsettled = .allocate(capacity: count)
            unsettled.initialize(repeating: [], count: count)
            done = Mutex([Bool](repeating: false, count: count))
            self.compute = compute
        }

        deinit {
            rows.deinitialize(count: count)
            rows.deallocate()
            unsettled.deinitialize(count: count)
            unsettled.deallocate()
        }

        /// Claims and computes the next row; `false` when every row is claimed.
        private func step(first: Int) -> Bool {
            let k = next.wrappingAdd(1, ordering: .relaxed).oldValue
            guard k < count else { return false }
            compute(first + k, &rows[k], &unsettled[k])
            done.withLock { $0[k] = true }
            return true
        }

        /// Computes every row (row `k` is symbol `first + k`), handing each to `finish` in
        /// order on this thread, with the pairs the vectors left in it; a row is dropped once
        /// `finish` returns.
        func run(first: Int, finish: (Int, inout CorrelationRow, [(Int, Int)]) throws -> Void) throws {
            // Not waited for: once every row is done the helper has nothing left to compute
            // (it may start late, or not before this returns, and then finds no row to claim);
            // the buffers live as long as it holds `self`.
            DispatchQueue.global(qos: .userInitiated).async { [self] in
                while step(first: first) {}
            }
            var finished = 0
            while finished < count {
                if done.withLock({ $0[finished] }) {
                    try finish(first + finished, &rows[finished], unsettled[finished])
                    // Stored: its memory goes now, not with the last row.
                    rows[finished] = CorrelationRow(count: 0)
                    unsettled[finished] = []
                    finished += 1
                } else if !step(first: first) {
                    sched_yield()
                }
            }
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
