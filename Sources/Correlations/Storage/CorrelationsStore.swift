import EventCatalog
import Foundation
import GRDB
import MessageBus
import ServiceRuntime
import Synchronization

/// The correlations service's own projection of every symbol's returns (from
/// `returns_calculated`, never from the returns service's database), its tracked windows,
/// and the pair correlations.
public final class CorrelationsStore: Sendable {
    let database: ServiceDatabase
    /// Each symbol's latest returns (see ``SeriesCache``).
    private let cache = Mutex(SeriesCache())

    public init(database: ServiceDatabase) { self.database = database }

    /// Windows tracked from the start.
    public static let defaultWindows = [20, 60, 252]

    public static func migrate(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("correlations-v1") { db in
            try db.execute(sql: """
                CREATE TABLE IF NOT EXISTS returns (
                    symbol TEXT NOT NULL,
                    date INTEGER NOT NULL,
                    value REAL NOT NULL,
                    PRIMARY KEY (symbol, date)
                ) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS symbols (
                    symbol TEXT PRIMARY KEY,
                    version INTEGER NOT NULL
                ) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS windows (
                    window INTEGER PRIMARY KEY
                );
                CREATE TABLE IF NOT EXISTS correlations (
                    window INTEGER NOT NULL,
                    a TEXT NOT NULL,
                    b TEXT NOT NULL,
                    value REAL,
                    observations INTEGER NOT NULL,
                    as_of INTEGER,
                    PRIMARY KEY (window, a, b)
                ) WITHOUT ROWID;
                """)
            for window in defaultWindows {
                try db.execute(sql: "INSERT OR IGNORE INTO windows (window) VALUES (?)", arguments: [window])
            }
        }
    }

    // MARK: - Writes

    /// Runs `body` on the service's tables in one transaction that also stores the events
    /// raised in `context` (outbox) and, for an event, records it handled (inbox). `false`
    /// when the event was handled before: `body` did not run.
    @discardableResult
    public func write(_ context: HandlerContext,
                      _ body: @escaping @Sendable (CorrelationsTransaction) throws -> Void) async throws -> Bool {
        try await database.write(context) { [self] db in try body(CorrelationsTransaction(db: db, store: self)) }
    }

    /// A batch handler's write: one transaction records the events of `contexts` not handled
    /// before in the inbox, runs `body` with their indices, and stores the events every context
    /// raised (see `ServiceDatabase.write(_:_:)`). Returns those indices.
    @discardableResult
    public func write(_ contexts: [HandlerContext],
                      _ body: @escaping @Sendable (CorrelationsTransaction, [Int]) throws -> Void) async throws -> [Int] {
        try await database.write(contexts) { [self] db, fresh in try body(CorrelationsTransaction(db: db, store: self), fresh) }
    }

    /// Every symbol's latest returns — enough for `windows` — reloading from `db` only those
    /// whose version changed (and all of them when a larger window needs more).
    fileprivate func series(in db: Database, windows: [Int]) throws -> [String: SeriesCache.Entry] {
        let versions = try Row.fetchAll(db.cachedStatement(sql: "SELECT symbol, version FROM symbols"))
        let keep = SeriesCache.length(for: windows)
        var current = cache.withLock { $0 }
        if current.length < keep { current = SeriesCache(length: keep) }
        var out: [String: SeriesCache.Entry] = [:]
        for row in versions {
            let symbol: String = row[0]
            let version: Int64 = row[1]
            if let cached = current.entries[symbol], cached.version == version {
                out[symbol] = cached
                continue
            }
            var entry = try Self.load(symbol, limit: current.length, db)
            entry.version = version
            current.entries[symbol] = entry
            out[symbol] = entry
        }
        cache.withLock { $0 = current }
        return out
    }

    /// `symbol`'s latest `limit` returns (all of them without a limit), oldest first.
    fileprivate static func load(_ symbol: String, limit: Int?, _ db: Database) throws -> SeriesCache.Entry {
        var series = ReturnSeries()
        let rows = try Row.fetchCursor(
            db.cachedStatement(sql: """
                SELECT date, value FROM (SELECT date, value FROM returns WHERE symbol = ? ORDER BY date DESC LIMIT ?)
                ORDER BY date
                """),
            arguments: [symbol, limit ?? -1])
        while let r = try rows.next() {
            series.days.append(Int32(r[0] as Int))
            series.values.append(r[1])
        }
        // Kept as long as the symbol does not change: no room left from the appends' doublings.
        series = ReturnSeries(days: Array(series.days[...]), values: Array(series.values[...]))
        return SeriesCache.Entry(series: series, complete: limit.map { series.count < $0 } ?? true)
    }

    // MARK: - Reads

    public func isTracked(_ window: Int) async throws -> Bool {
        try await database.pool.read { db in
            try Bool.fetchOne(db, sql: "SELECT 1 FROM windows WHERE window = ?", arguments: [window]) ?? false
        }
    }

    /// The symbols in the projection.
    public func knownSymbols() async throws -> Set<String> {
        try await database.pool.read { db in Set(try String.fetchAll(db, sql: "SELECT symbol FROM symbols")) }
    }

    /// The stored pair correlations among `symbols` for `window`, keyed by the sorted pair.
    public func pairs(among symbols: [String], window: Int) async throws -> [Pair: PairCorrelation] {
        try await database.pool.read { db in
            var out: [Pair: PairCorrelation] = [:]
            let rows = try Self.pairRows(among: Array(Set(symbols)), window: window, db)
            while let row = try rows.next() {
                out[Pair(row[0], row[1])] = PairCorrelation(
                    value: row[2], observations: row[3], asOfDay: (row[4] as Int?).map(Int32.init))
            }
            return out
        }
    }

    /// The stored correlations among `symbols` (each once) for `window`, as a row-major
    /// `n × n` matrix with an empty diagonal, and the latest `as_of` day of the pairs. Rows are
    /// read with a cursor straight into the matrix: 500 symbols are 124,750 rows, which as GRDB
    /// `Row`s and a dictionary of pairs took tens of megabytes per request.
    public func matrix(of symbols: [String], window: Int) async throws -> (values: [Double?], asOfDay: Int32?) {
        try await database.pool.read { db in
            let n = symbols.count
            var index: [String: Int] = [:]
            index.reserveCapacity(n)
            for (i, symbol) in symbols.enumerated() { index[symbol] = i }
            var values = [Double?](repeating: nil, count: n * n)
            var asOf: Int32?
            guard n > 1 else { return (values, asOf) }
            let rows = try Self.pairRows(among: symbols, window: window, db)
            while let row = try rows.next() {
                guard let i = index[row[0]], let j = index[row[1]] else { continue }
                let value: Double? = row[2]
                values[i * n + j] = value
                values[j * n + i] = value
                if let day: Int = row[4] { asOf = max(asOf ?? Int32(day), Int32(day)) }
            }
            return (values, asOf)
        }
    }

    /// The stored rows `a, b, value, observations, as_of` of the pairs among `symbols` (each
    /// once) for `window`.
    private static func pairRows(among symbols: [String], window: Int, _ db: Database) throws -> RowCursor {
        let marks = symbols.map { _ in "?" }.joined(separator: ",")
        var arguments: [any DatabaseValueConvertible] = [window]
        arguments += symbols
        arguments += symbols
        return try Row.fetchCursor(db, sql: """
            SELECT a, b, value, observations, as_of FROM correlations
            WHERE window = ? AND a IN (\(marks)) AND b IN (\(marks))
            """, arguments: StatementArguments(arguments))
    }

    /// The diagonal of `symbol` for `window`, from its latest returns.
    public func diagonal(_ symbol: String, window: Int) async throws -> PairCorrelation {
        try await database.pool.read { db in
            var series = ReturnSeries()
            for r in try Row.fetchAll(db, sql: """
                SELECT date, value FROM (SELECT date, value FROM returns WHERE symbol = ? ORDER BY date DESC LIMIT ?)
                ORDER BY date
                """, arguments: [symbol, window]) {
                series.days.append(Int32(r["date"] as Int))
                series.values.append(r["value"])
            }
            return CorrelationMath.diagonal(series, window: window)
        }
    }
}

/// A pair of symbols in sorted order.
public struct Pair: Hashable, Sendable {
    public let a: String
    public let b: String
    public init(_ x: String, _ y: String) {
        (a, b) = x < y ? (x, y) : (y, x)
    }
}

/// The correlations worker's memory of return series: each symbol's latest returns only —
/// the largest tracked window and a margin for calendars that differ by a few days — so it
/// stays small however long the history (500 symbols of 10 years were 15 MB as whole series).
/// Pairs whose latest common dates reach further back are computed from the database.
struct SeriesCache: Sendable {
    struct Entry: Sendable {
        var series: ReturnSeries
        /// Whether `series` holds every stored return of the symbol.
        var complete: Bool
        /// The symbol's `symbols.version` when it was read.
        var version: Int64 = 0
    }

    /// Returns kept per symbol.
    var length = 0
    var entries: [String: Entry] = [:]

    init(length: Int = 0) { self.length = length }

    /// How many of a symbol's latest returns to keep for `windows`.
    static func length(for windows: [Int]) -> Int { (windows.max() ?? 0) + 64 }
}

/// The correlations service's tables inside one write's transaction (see
/// ``CorrelationsStore/write(_:_:)``).
public struct CorrelationsTransaction {
    let db: Database
    let store: CorrelationsStore

    /// Tracks `window` (nothing when it is tracked already).
    public func track(window: Int) throws {
        try db.execute(sql: "INSERT OR IGNORE INTO windows (window) VALUES (?)", arguments: [window])
    }

    /// The tracked windows, ascending.
    public func trackedWindows() throws -> [Int] {
        try Int.fetchAll(db.cachedStatement(sql: "SELECT window FROM windows ORDER BY window"))
    }

    /// Stores `returns` of `symbol` in the projection (a date on record is replaced) and, when
    /// any came, moves the symbol's version on (what tells cached series apart).
    func saveReturns(_ returns: [DatedValue], of symbol: String) throws {
        let upsert = try db.cachedStatement(sql: """
            INSERT INTO returns (symbol, date, value) VALUES (?, ?, ?)
            ON CONFLICT (symbol, date) DO UPDATE SET value = excluded.value
            """)
        for r in returns {
            try upsert.execute(arguments: [symbol, r.date.daysSinceEpoch, r.value])
        }
        try db.cachedStatement(sql: """
            INSERT INTO symbols (symbol, version) VALUES (?, 1)
            ON CONFLICT (symbol) DO UPDATE SET version = version + \(returns.isEmpty ? 0 : 1)
            """).execute(arguments: [symbol])
    }

    /// The symbols in the projection.
    func knownSymbols() throws -> Set<String> {
        Set(try String.fetchAll(db.cachedStatement(sql: "SELECT symbol FROM symbols")))
    }

    /// The day of `symbol`'s latest return in the projection, if any.
    func lastDay(of symbol: String) throws -> Int32? {
        try Int.fetchOne(db.cachedStatement(sql: "SELECT max(date) FROM returns WHERE symbol = ?"),
                         arguments: [symbol]).map(Int32.init)
    }

    /// Every symbol's latest returns, enough for `windows` (from the store's cache when the
    /// symbol has not changed).
    func latestSeries(windows: [Int]) throws -> [String: SeriesCache.Entry] {
        try store.series(in: db, windows: windows)
    }

    /// Every return of `symbol`, oldest first.
    func wholeSeries(of symbol: String) throws -> ReturnSeries {
        try CorrelationsStore.load(symbol, limit: nil, db).series
    }

    /// Stores the correlation of the pair `x`, `y` over `window`.
    func savePair(window: Int, _ x: String, _ y: String, _ c: PairCorrelation) throws {
        let (a, b) = x < y ? (x, y) : (y, x)
        try DirectBinding.execute(db.cachedStatement(sql: """
            INSERT INTO correlations (window, a, b, value, observations, as_of) VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (window, a, b) DO UPDATE SET value = excluded.value,
                observations = excluded.observations, as_of = excluded.as_of
            """), in: db) { row in
            row.bind(1, window)
            row.bind(2, a)
            row.bind(3, b)
            row.bind(4, c.value)
            row.bind(5, c.observations)
            if let day = c.asOfDay { row.bind(6, Int(day)) } else { row.bindNull(6) }
        }
    }
}
