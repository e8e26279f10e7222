import EventCatalog
import Foundation
import GRDB
import MessageBus
import ServiceRuntime
import Synchronization

/// The correlations service's own projection of every symbol's returns (from
/// `returns_calculated`, never from the returns service's database), its tracked windows,
/// and the pair correlations. The tables have one implementation per engine
/// (``CorrelationsTables``: SQLite here, PostgreSQL in CorrelationsStore+Postgres.swift).
public final class CorrelationsStore: Sendable {
    let database: ServiceDatabase
    /// Each symbol's latest returns (see ``SeriesCache``).
    private let cache = Mutex(SeriesCache())

    public init(database: ServiceDatabase) { self.database = database }

    /// Windows tracked from the start.
    public static let defaultWindows = [20, 60, 252]

    /// The tables of the correlations service on each engine.
    public static let migrations = StoreMigrations(sqlite: migrate, postgres: postgresMigrations)

    /// The tables of the correlations service (SQLite).
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
        // The view in rows of cells (see `CorrelationRow`): symbols get an index (in name
        // order for those already known, then in order of arrival), and the pairs on record
        // move into the rows.
        migrator.registerMigration("correlations-v2-rows") { db in
            try db.execute(sql: """
                ALTER TABLE symbols ADD COLUMN idx INTEGER;
                CREATE TABLE correlation_rows (
                    window INTEGER NOT NULL,
                    idx INTEGER NOT NULL,
                    cells BLOB NOT NULL,
                    PRIMARY KEY (window, idx)
                ) WITHOUT ROWID;
                """)
            let names = try String.fetchAll(db, sql: "SELECT symbol FROM symbols ORDER BY symbol")
            var index: [String: Int] = [:]
            for (i, name) in names.enumerated() {
                index[name] = i
                try db.execute(sql: "UPDATE symbols SET idx = ? WHERE symbol = ?", arguments: [i, name])
            }
            try db.execute(sql: "CREATE UNIQUE INDEX symbols_by_idx ON symbols (idx)")
            for window in try Int.fetchAll(db, sql: "SELECT DISTINCT window FROM correlations") {
                var rows = names.indices.map { CorrelationRow(count: $0 + 1) }
                let pairs = try Row.fetchCursor(db, sql: "SELECT a, b, value, observations, as_of FROM correlations WHERE window = ?",
                                                arguments: [window])
                while let pair = try pairs.next() {
                    guard let a = index[pair[0]], let b = index[pair[1]], a != b else { continue }
                    rows[max(a, b)][min(a, b)] = PairCorrelation(value: pair[2], observations: pair[3],
                                                                 asOfDay: (pair[4] as Int?).map(Int32.init))
                }
                for (i, var row) in rows.enumerated() {
                    row[i] = CorrelationMath.diagonal(try SQLiteCorrelationsTables(db: db).load(names[i], limit: window).series,
                                                      window: window)
                    try db.execute(sql: "INSERT INTO correlation_rows (window, idx, cells) VALUES (?, ?, ?)",
                                   arguments: [window, i, Data(row.bytes)])
                }
            }
            try db.execute(sql: "DROP TABLE correlations")
        }
        // Compact rows (see `CorrelationRow`): the rows on record keep their 16-byte cells.
        migrator.registerMigration("correlations-v3-compact-rows") { db in
            try db.execute(sql: "ALTER TABLE correlation_rows ADD COLUMN shared BLOB")
        }
    }

    // MARK: - Writes

    /// Runs `body` on the service's tables in one transaction that also stores the events
    /// raised in `context` (outbox) and, for an event, records it handled (inbox). `false`
    /// when the event was handled before: `body` did not run.
    @discardableResult
    public func write(_ context: HandlerContext,
                      _ body: @escaping @Sendable (CorrelationsTransaction) throws -> Void) async throws -> Bool {
        try await database.write(context) { [self] connection in try body(CorrelationsTransaction(tables: Self.tables(connection), store: self)) }
    }

    /// A batch handler's write: one transaction records the events of `contexts` not handled
    /// before in the inbox, runs `body` with their indices, and stores the events every context
    /// raised (see `ServiceDatabase.write(_:_:)`). Returns those indices.
    @discardableResult
    public func write(_ contexts: [HandlerContext],
                      _ body: @escaping @Sendable (CorrelationsTransaction, [Int]) throws -> Void) async throws -> [Int] {
        try await database.write(contexts) { [self] connection, fresh in
            try body(CorrelationsTransaction(tables: Self.tables(connection), store: self), fresh)
        }
    }

    /// Every symbol's latest returns — enough for `windows` — reloading from `db` only those
    /// whose version changed (and all of them when a larger window needs more).
    fileprivate func series(in tables: any CorrelationsTables, windows: [Int]) throws -> [String: SeriesCache.Entry] {
        let versions = try tables.versions()
        let keep = SeriesCache.length(for: windows)
        var current = cache.withLock { $0 }
        if current.length < keep { current = SeriesCache(length: keep) }
        var out: [String: SeriesCache.Entry] = [:]
        for (symbol, version) in versions {
            if let cached = current.entries[symbol], cached.version == version {
                out[symbol] = cached
                continue
            }
            var entry = try tables.load(symbol, limit: current.length)
            entry.version = version
            current.entries[symbol] = entry
            out[symbol] = entry
        }
        cache.withLock { $0 = current }
        return out
    }

    /// Moves the cached series of `symbol` from version `old` to `new` by appending `returns`,
    /// when they all come after its last return (the usual case: a new day); otherwise the
    /// next ``series(in:windows:)`` reloads it (its version no longer matches). Done inside
    /// the write's transaction: if it rolls back, `new` is never stored, so the entry is never
    /// used.
    fileprivate func appended(_ returns: [DatedValue], of symbol: String, from old: Int64?, to new: Int64) {
        cache.withLock { cache in
            guard let old, var entry = cache.entries[symbol], entry.version == old else { return }
            var last = entry.series.lastDay ?? .min
            for r in returns {
                let day = Int32(r.date.daysSinceEpoch)
                guard day > last else { return }
                last = day
            }
            for r in returns {
                entry.series.days.append(Int32(r.date.daysSinceEpoch))
                entry.series.values.append(r.value)
            }
            let excess = entry.series.count - cache.length
            if excess > 0 {
                entry.series.days.removeFirst(excess)
                entry.series.values.removeFirst(excess)
                entry.complete = false
            }
            entry.version = new
            cache.entries[symbol] = entry
        }
    }

    // MARK: - Reads

    public func isTracked(_ window: Int) async throws -> Bool {
        try await database.read { connection in try Self.tables(connection).trackedWindows().contains(window) }
    }

    /// The tracked windows, ascending.
    public func windows() async throws -> [Int] {
        try await database.read { connection in try Self.tables(connection).trackedWindows() }
    }

    /// The symbols in the projection.
    public func knownSymbols() async throws -> Set<String> {
        try await database.read { connection in Set(try Self.tables(connection).symbolsByIndex()) }
    }

    /// The stored correlation of the pair `a`, `b` for `window` (the diagonal when `a == b`);
    /// `nil` when either is unknown.
    public func pair(_ a: String, _ b: String, window: Int) async throws -> PairCorrelation? {
        try await database.read { connection in
            let tables = Self.tables(connection)
            let index = try tables.indices(of: [a, b])
            guard let i = index[a], let j = index[b] else { return nil }
            return try tables.row(window: window, index: max(i, j))?[min(i, j)]
                ?? PairCorrelation(value: nil, observations: 0, asOfDay: nil)
        }
    }

    /// The stored correlations among `symbols` (each once) for `window`, as a row-major
    /// `n × n` matrix (NaN: `null`), and the latest `as_of` day of its cells: one stored row read per symbol
    /// (see `CorrelationRow`).
    public func matrix(of symbols: [String], window: Int) async throws -> (values: [Double], asOfDay: Int32?) {
        try await database.read { connection in
            let tables = Self.tables(connection)
            let n = symbols.count
            var values = [Double](repeating: .nan, count: n * n)
            var asOf: Int32?
            let index = try tables.indices(of: symbols)
            // The requested symbols by stored index: row `i` holds the pairs with lower ones.
            let known = symbols.enumerated().compactMap { position, symbol in index[symbol].map { (index: $0, position: position) } }
                .sorted { $0.index < $1.index }
            for (k, mine) in known.enumerated() {
                guard let row = try tables.row(window: window, index: mine.index) else { continue }
                for other in known[...k] {
                    let cell = row[other.index]
                    values[mine.position * n + other.position] = cell.value ?? .nan
                    values[other.position * n + mine.position] = cell.value ?? .nan
                    if let day = cell.asOfDay { asOf = max(asOf ?? day, day) }
                }
            }
            return (values, asOf)
        }
    }

    /// The tables on `connection`'s engine.
    static func tables(_ connection: StoreConnection) -> any CorrelationsTables {
        switch connection {
        case .sqlite(let db): return SQLiteCorrelationsTables(db: db)
        case .postgres(let session): return PostgresCorrelationsTables(session: session)
        }
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

/// The correlations service's tables, on one engine: every query the store makes.
protocol CorrelationsTables {
    /// Tracks `window` (nothing when it is tracked already).
    func track(window: Int) throws
    /// The tracked windows, ascending.
    func trackedWindows() throws -> [Int]
    /// Every symbol with its `symbols.version`.
    func versions() throws -> [(String, Int64)]
    /// `symbol`'s latest `limit` returns (all of them without a limit), oldest first.
    func load(_ symbol: String, limit: Int?) throws -> SeriesCache.Entry
    /// `symbol`'s version, `nil` when the symbol is not in the projection.
    func version(of symbol: String) throws -> Int64?
    /// Stores `returns` of `symbol` (a date on record is replaced) and sets its version; a new
    /// symbol gets the next index.
    func saveReturns(_ returns: [DatedValue], of symbol: String, version: Int64) throws
    /// How many symbols the projection holds.
    func symbolCount() throws -> Int
    /// The day of `symbol`'s latest return in the projection, if any.
    func lastDay(of symbol: String) throws -> Int32?
    /// Every symbol of the projection, by stored index (see `CorrelationRow`).
    func symbolsByIndex() throws -> [String]
    /// The stored index of each of `symbols` that is known.
    func indices(of symbols: [String]) throws -> [String: Int]
    /// The stored row of symbol `index` for `window`.
    func row(window: Int, index: Int) throws -> CorrelationRow?
    /// Stores the row of symbol `index` for `window`.
    func saveRow(window: Int, index: Int, _ row: CorrelationRow) throws
}

/// The correlations service's tables inside one write's transaction (see
/// ``CorrelationsStore/write(_:_:)``).
public struct CorrelationsTransaction {
    let tables: any CorrelationsTables
    let store: CorrelationsStore

    /// Tracks `window` (nothing when it is tracked already).
    public func track(window: Int) throws { try tables.track(window: window) }

    /// The tracked windows, ascending.
    public func trackedWindows() throws -> [Int] { try tables.trackedWindows() }

    /// Stores `returns` of `symbol` in the projection (a date on record is replaced) and, when
    /// any came, gives the symbol a new version (what tells cached series apart): a random
    /// one, so that the version of a transaction that rolled back — whose series the cache
    /// may have read — never comes back with other returns. `true` when the symbol is new.
    @discardableResult
    func saveReturns(_ returns: [DatedValue], of symbol: String) throws -> Bool {
        let old = try tables.version(of: symbol)
        let version = returns.isEmpty ? old ?? 1 : Int64.random(in: 1...Int64.max)
        try tables.saveReturns(returns, of: symbol, version: version)
        if !returns.isEmpty { store.appended(returns, of: symbol, from: old, to: version) }
        return old == nil
    }

    /// How many symbols the projection holds.
    func symbolCount() throws -> Int { try tables.symbolCount() }

    /// The day of `symbol`'s latest return in the projection, if any.
    func lastDay(of symbol: String) throws -> Int32? { try tables.lastDay(of: symbol) }

    /// Every symbol's latest returns, enough for `windows` (from the store's cache when the
    /// symbol has not changed).
    func latestSeries(windows: [Int]) throws -> [String: SeriesCache.Entry] {
        try store.series(in: tables, windows: windows)
    }

    /// Every return of `symbol`, oldest first.
    func wholeSeries(of symbol: String) throws -> ReturnSeries {
        try tables.load(symbol, limit: nil).series
    }

    /// Every symbol of the projection, by stored index (see `CorrelationRow`).
    func symbolsByIndex() throws -> [String] { try tables.symbolsByIndex() }

    /// The stored row of symbol `index` for `window`.
    func row(window: Int, index: Int) throws -> CorrelationRow? { try tables.row(window: window, index: index) }

    /// Stores the row of symbol `index` for `window`.
    func saveRow(window: Int, index: Int, _ row: CorrelationRow) throws { try tables.saveRow(window: window, index: index, row) }
}

/// The correlations service's tables in its SQLite file.
struct SQLiteCorrelationsTables: CorrelationsTables {
    let db: Database

    func track(window: Int) throws {
        try db.execute(sql: "INSERT OR IGNORE INTO windows (window) VALUES (?)", arguments: [window])
    }

    func trackedWindows() throws -> [Int] {
        try Int.fetchAll(db.cachedStatement(sql: "SELECT window FROM windows ORDER BY window"))
    }

    func versions() throws -> [(String, Int64)] {
        var versions: [(String, Int64)] = []
        try DirectBinding.query(db.cachedStatement(sql: "SELECT symbol, version FROM symbols"), in: db) { _ in } each: { columns in
            versions.append((columns.withText(0) { String(decoding: $0, as: UTF8.self) }, Int64(columns.int(1))))
        }
        return versions
    }

    // SQLite's column calls: a batch reloads a few hundred series.
    func load(_ symbol: String, limit: Int?) throws -> SeriesCache.Entry {
        var days: [Int32] = [], values: [Double] = []
        if let limit {
            days.reserveCapacity(limit)
            values.reserveCapacity(limit)
        }
        try DirectBinding.query(db.cachedStatement(sql: """
            SELECT date, value FROM (SELECT date, value FROM returns WHERE symbol = ? ORDER BY date DESC LIMIT ?)
            ORDER BY date
            """), in: db) { row in
            row.bind(1, symbol)
            row.bind(2, limit ?? -1)
        } each: { columns in
            days.append(Int32(truncatingIfNeeded: columns.int(0)))
            values.append(columns.double(1))
        }
        let series = ReturnSeries(days: days, values: values)
        return SeriesCache.Entry(series: series, complete: limit.map { series.count < $0 } ?? true)
    }


    func version(of symbol: String) throws -> Int64? {
        try Int64.fetchOne(db.cachedStatement(sql: "SELECT version FROM symbols WHERE symbol = ?"), arguments: [symbol])
    }

    func saveReturns(_ returns: [DatedValue], of symbol: String, version: Int64) throws {
        let upsert = try db.cachedStatement(sql: """
            INSERT INTO returns (symbol, date, value) VALUES (?, ?, ?)
            ON CONFLICT (symbol, date) DO UPDATE SET value = excluded.value
            """)
        for r in returns {
            try DirectBinding.execute(upsert, in: db) { row in
                row.bind(1, symbol)
                row.bind(2, r.date.daysSinceEpoch)
                row.bind(3, r.value)
            }
        }
        try db.cachedStatement(sql: """
            INSERT INTO symbols (symbol, version, idx) VALUES (?1, ?2, (SELECT coalesce(max(idx) + 1, 0) FROM symbols))
            ON CONFLICT (symbol) DO UPDATE SET version = ?2
            """).execute(arguments: [symbol, version])
    }

    func symbolCount() throws -> Int {
        try Int.fetchOne(db.cachedStatement(sql: "SELECT count(*) FROM symbols")) ?? 0
    }

    func lastDay(of symbol: String) throws -> Int32? {
        try Int.fetchOne(db.cachedStatement(sql: "SELECT max(date) FROM returns WHERE symbol = ?"),
                         arguments: [symbol]).map(Int32.init)
    }

    func symbolsByIndex() throws -> [String] {
        try String.fetchAll(db.cachedStatement(sql: "SELECT symbol FROM symbols ORDER BY idx"))
    }

    func indices(of symbols: [String]) throws -> [String: Int] {
        let wanted = Set(symbols)
        var index: [String: Int] = [:]
        let rows = try Row.fetchCursor(db.cachedStatement(sql: "SELECT symbol, idx FROM symbols"))
        while let row = try rows.next() {
            let symbol: String = row[0]
            if wanted.contains(symbol) { index[symbol] = row[1] }
        }
        return index
    }

    func row(window: Int, index: Int) throws -> CorrelationRow? {
        var row: CorrelationRow?
        try DirectBinding.query(db.cachedStatement(sql: "SELECT cells, shared FROM correlation_rows WHERE window = ? AND idx = ?"),
                                in: db) { statement in
            statement.bind(1, window)
            statement.bind(2, index)
        } each: { columns in
            row = CorrelationRow(cells: columns.withBlob(0) { Array($0) },
                                 shared: columns.isNull(1) ? nil : columns.withBlob(1) { Array($0) })
        }
        return row
    }

    func saveRow(window: Int, index: Int, _ row: CorrelationRow) throws {
        let stored = row.encoded()
        try DirectBinding.execute(db.cachedStatement(sql: """
            INSERT INTO correlation_rows (window, idx, cells, shared) VALUES (?, ?, ?, ?)
            ON CONFLICT (window, idx) DO UPDATE SET cells = excluded.cells, shared = excluded.shared
            """), in: db) { statement in
            statement.bind(1, window)
            statement.bind(2, index)
            statement.bind(3, stored.cells)
            if let shared = stored.shared { statement.bind(4, shared) } else { statement.bindNull(4) }
        }
    }
}
