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
    /// Return series by symbol, with the version they were loaded at (see `symbols.version`).
    private let cache = Mutex<[String: (version: Int64, series: ReturnSeries)]>([:])

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

    // MARK: - Commands and events

    /// Tracks `window` and raises `WindowAdded` (also when it was tracked already, so the
    /// operation resolves with a fresh backfill).
    public func addWindow(_ window: Int, context: HandlerContext) async throws {
        try await database.write(context) { db in
            try db.execute(sql: "INSERT OR IGNORE INTO windows (window) VALUES (?)", arguments: [window])
            try context.raise(WindowAdded(window: window))
        }
    }

    /// Stores `event`'s returns in the projection, recomputes every pair that includes its
    /// symbol for every tracked window, and raises `CorrelationsUpdated`.
    @discardableResult
    public func apply(_ event: ReturnsCalculated, context: HandlerContext) async throws -> CorrelationsUpdated? {
        let result = Mutex<CorrelationsUpdated?>(nil)
        try await database.write(context) { [self] db in
            let symbol = event.symbol
            let upsert = try db.cachedStatement(sql: """
                INSERT INTO returns (symbol, date, value) VALUES (?, ?, ?)
                ON CONFLICT (symbol, date) DO UPDATE SET value = excluded.value
                """)
            for r in event.returns {
                try upsert.execute(arguments: [symbol, r.date.daysSinceEpoch, r.value])
            }
            try db.cachedStatement(sql: """
                INSERT INTO symbols (symbol, version) VALUES (?, 1)
                ON CONFLICT (symbol) DO UPDATE SET version = version + \(event.returns.isEmpty ? 0 : 1)
                """).execute(arguments: [symbol])
            let all = try series(in: db)
            let mine = all[symbol] ?? ReturnSeries()
            var windows: [Int] = []
            var pairs = 0
            if !event.returns.isEmpty {
                windows = try Int.fetchAll(db.cachedStatement(sql: "SELECT window FROM windows ORDER BY window"))
                for window in windows {
                    for (other, series) in all where other != symbol {
                        try write(window, symbol, other, CorrelationMath.pair(mine, series, window: window), db)
                        pairs += 1
                    }
                }
            }
            let updated = CorrelationsUpdated(
                symbols: [symbol], windows: windows,
                asOf: mine.lastDay.map { CalendarDate(daysSinceEpoch: Int($0)) }, pairs: pairs)
            try context.raise(updated)
            result.withLock { $0 = updated }
        }
        return result.withLock { $0 }
    }

    /// Computes every pair of every symbol for `window` (a backfill) and raises `CorrelationsUpdated`.
    @discardableResult
    public func backfill(_ event: WindowAdded, context: HandlerContext) async throws -> CorrelationsUpdated? {
        let result = Mutex<CorrelationsUpdated?>(nil)
        try await database.write(context) { [self] db in
            try db.execute(sql: "INSERT OR IGNORE INTO windows (window) VALUES (?)", arguments: [event.window])
            let all = try series(in: db).sorted { $0.key < $1.key }
            var pairs = 0
            for i in 0..<all.count {
                for j in (i + 1)..<all.count {
                    try write(event.window, all[i].key, all[j].key,
                              CorrelationMath.pair(all[i].value, all[j].value, window: event.window), db)
                    pairs += 1
                }
            }
            let asOf = all.compactMap(\.value.lastDay).max().map { CalendarDate(daysSinceEpoch: Int($0)) }
            let updated = CorrelationsUpdated(symbols: all.map(\.key), windows: [event.window], asOf: asOf, pairs: pairs)
            try context.raise(updated)
            result.withLock { $0 = updated }
        }
        return result.withLock { $0 }
    }

    private func write(_ window: Int, _ x: String, _ y: String, _ c: PairCorrelation, _ db: Database) throws {
        let (a, b) = x < y ? (x, y) : (y, x)
        try db.cachedStatement(sql: """
            INSERT INTO correlations (window, a, b, value, observations, as_of) VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (window, a, b) DO UPDATE SET value = excluded.value,
                observations = excluded.observations, as_of = excluded.as_of
            """).execute(arguments: [window, a, b, c.value, c.observations, c.asOfDay.map { Int($0) }])
    }

    /// Every symbol's series, reloading from `db` only those whose version changed.
    private func series(in db: Database) throws -> [String: ReturnSeries] {
        let versions = try Row.fetchAll(db.cachedStatement(sql: "SELECT symbol, version FROM symbols"))
        var current = cache.withLock { $0 }
        var out: [String: ReturnSeries] = [:]
        for row in versions {
            let symbol: String = row["symbol"]
            let version: Int64 = row["version"]
            if let cached = current[symbol], cached.version == version {
                out[symbol] = cached.series
                continue
            }
            var series = ReturnSeries()
            for r in try Row.fetchAll(
                db.cachedStatement(sql: "SELECT date, value FROM returns WHERE symbol = ? ORDER BY date"),
                arguments: [symbol]) {
                series.days.append(Int32(r["date"] as Int))
                series.values.append(r["value"])
            }
            current[symbol] = (version, series)
            out[symbol] = series
        }
        cache.withLock { $0 = current }
        return out
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
            let unique = Array(Set(symbols))
            let marks = unique.map { _ in "?" }.joined(separator: ",")
            var arguments: [any DatabaseValueConvertible] = [window]
            arguments += unique
            arguments += unique
            var out: [Pair: PairCorrelation] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT a, b, value, observations, as_of FROM correlations
                WHERE window = ? AND a IN (\(marks)) AND b IN (\(marks))
                """, arguments: StatementArguments(arguments)) {
                out[Pair(row["a"], row["b"])] = PairCorrelation(
                    value: row["value"], observations: row["observations"],
                    asOfDay: (row["as_of"] as Int?).map(Int32.init))
            }
            return out
        }
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
