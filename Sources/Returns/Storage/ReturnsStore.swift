import EventCatalog
import Foundation
import GRDB
import MessageBus
import ServiceRuntime

/// The returns service's state and read views, in its store: the SQL, and nothing of the rules
/// (those are in `ReturnsHandlers`). Every write also stores the events it raises (outbox), in
/// the same transaction. The tables have one implementation per engine (``ReturnsTables``:
/// SQLite here, PostgreSQL in ReturnsStore+Postgres.swift); nothing above this file sees which.
public struct ReturnsStore: Sendable {
    let database: ServiceDatabase

    public init(database: ServiceDatabase) { self.database = database }

    /// The tables of the returns service on each engine.
    public static let migrations = StoreMigrations(sqlite: migrate, postgres: postgresMigrations)

    /// The tables of the returns service (SQLite).
    public static func migrate(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("returns-v1") { db in
            try db.execute(sql: """
                CREATE TABLE IF NOT EXISTS prices (
                    symbol TEXT NOT NULL,
                    date TEXT NOT NULL,
                    close REAL NOT NULL,
                    PRIMARY KEY (symbol, date)
                ) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS returns (
                    symbol TEXT NOT NULL,
                    date TEXT NOT NULL,
                    simple REAL NOT NULL,
                    log REAL NOT NULL,
                    PRIMARY KEY (symbol, date)
                ) WITHOUT ROWID;
                """)
        }
    }

    /// Runs `body` on the service's tables in one transaction that also stores the events
    /// raised in `context` (outbox) and, for an event, records it handled (inbox). `false`
    /// when the event was handled before: `body` did not run.
    @discardableResult
    public func write(_ context: HandlerContext,
                      _ body: @escaping @Sendable (ReturnsTransaction) throws -> Void) async throws -> Bool {
        try await database.write(context) { connection in try body(ReturnsTransaction(connection)) }
    }

    /// A batch handler's write: one transaction records the events of `contexts` not handled
    /// before in the inbox, runs `body` with their indices, and stores the events every context
    /// raised (see `ServiceDatabase.write(_:_:)`). Returns those indices.
    public func write(_ contexts: [HandlerContext],
                      _ body: @escaping @Sendable (ReturnsTransaction, [Int]) throws -> Void) async throws -> [Int] {
        try await database.write(contexts) { connection, fresh in try body(ReturnsTransaction(connection), fresh) }
    }

    /// Every symbol with prices, sorted.
    public func symbols() async throws -> [String] {
        try await database.read { connection in try Self.tables(connection).symbols() }
    }

    /// The prices of `symbol` in `[from, to]`, or `nil` when the symbol has none at all.
    public func prices(of symbol: String, from: CalendarDate?, to: CalendarDate?) async throws -> [PricePoint]? {
        try await database.read { connection in try Self.tables(connection).prices(of: symbol, from: from, to: to) }
    }

    /// The daily returns of `symbol` in `[from, to]`, or `nil` when the symbol has no prices.
    public func returns(of symbol: String, from: CalendarDate?, to: CalendarDate?, log: Bool) async throws -> [DatedValue]? {
        try await database.read { connection in try Self.tables(connection).returns(of: symbol, from: from, to: to, log: log) }
    }

    /// The tables on `connection`'s engine.
    static func tables(_ connection: StoreConnection) -> any ReturnsTables {
        switch connection {
        case .sqlite(let db): return SQLiteReturnsTables(db: db)
        case .postgres(let session): return PostgresReturnsTables(session: session)
        }
    }
}

/// The returns service's tables, on one engine: every query the store makes.
protocol ReturnsTables {
    /// Inserts `points` of `symbol`, or updates the close of a date on record.
    func savePrices(_ points: [PricePoint], of symbol: String) throws
    /// The prices of `symbol` from `first` on, preceded by the last one before `first` (the
    /// close the first return of `first` needs), in date order, each with the simple return
    /// stored for its date (if any).
    func pricesAndReturns(of symbol: String, from first: CalendarDate) throws -> [(PricePoint, Double?)]
    /// Inserts or replaces `returns` of `symbol`.
    func saveReturns(_ returns: [DailyReturn], of symbol: String) throws
    /// Every symbol with prices, sorted (by code point).
    func symbols() throws -> [String]
    /// The prices of `symbol` in `[from, to]`, or `nil` when the symbol has none at all.
    func prices(of symbol: String, from: CalendarDate?, to: CalendarDate?) throws -> [PricePoint]?
    /// The daily returns of `symbol` in `[from, to]`, or `nil` when the symbol has no prices.
    func returns(of symbol: String, from: CalendarDate?, to: CalendarDate?, log: Bool) throws -> [DatedValue]?
}

/// The returns service's tables inside one write's transaction (see ``ReturnsStore/write(_:_:)``).
public struct ReturnsTransaction {
    let tables: any ReturnsTables

    init(_ connection: StoreConnection) { tables = ReturnsStore.tables(connection) }

    /// Inserts `points` of `symbol`, or updates the close of a date on record.
    public func savePrices(_ points: [PricePoint], of symbol: String) throws {
        try tables.savePrices(points, of: symbol)
    }

    /// The prices of `symbol` from `first` on, preceded by the last one before `first` (the
    /// close the first return of `first` needs), in date order, each with the simple return
    /// stored for its date (if any).
    public func pricesAndReturns(of symbol: String, from first: CalendarDate) throws -> [(PricePoint, Double?)] {
        try tables.pricesAndReturns(of: symbol, from: first)
    }

    /// Inserts or replaces `returns` of `symbol`.
    public func saveReturns(_ returns: [DailyReturn], of symbol: String) throws {
        try tables.saveReturns(returns, of: symbol)
    }
}

/// The returns service's tables in its SQLite file.
struct SQLiteReturnsTables: ReturnsTables {
    let db: Database

    func symbols() throws -> [String] {
        try String.fetchAll(db, sql: "SELECT DISTINCT symbol FROM prices ORDER BY symbol")
    }

    func prices(of symbol: String, from: CalendarDate?, to: CalendarDate?) throws -> [PricePoint]? {
        guard try known(symbol) else { return nil }
        return try Row.fetchAll(db, sql: """
            SELECT date, close FROM prices WHERE symbol = ? AND date >= ? AND date <= ? ORDER BY date
            """, arguments: [symbol, from?.description ?? "0000-00-00", to?.description ?? "9999-99-99"])
            .compactMap { row in
                CalendarDate(row["date"] as String).map { PricePoint(date: $0, close: row["close"]) }
            }
    }

    func returns(of symbol: String, from: CalendarDate?, to: CalendarDate?, log: Bool) throws -> [DatedValue]? {
        guard try known(symbol) else { return nil }
        let column = log ? "log" : "simple"
        return try Row.fetchAll(db, sql: """
            SELECT date, \(column) AS value FROM returns
            WHERE symbol = ? AND date >= ? AND date <= ? ORDER BY date
            """, arguments: [symbol, from?.description ?? "0000-00-00", to?.description ?? "9999-99-99"])
            .compactMap { row in
                CalendarDate(row["date"] as String).map { DatedValue(date: $0, value: row["value"]) }
            }
    }

    private func known(_ symbol: String) throws -> Bool {
        try Bool.fetchOne(db, sql: "SELECT 1 FROM prices WHERE symbol = ? LIMIT 1", arguments: [symbol]) ?? false
    }

    func savePrices(_ points: [PricePoint], of symbol: String) throws {
        let statement = try db.cachedStatement(sql: """
            INSERT INTO prices (symbol, date, close) VALUES (?, ?, ?)
            ON CONFLICT (symbol, date) DO UPDATE SET close = excluded.close
            """)
        for point in points {
            try DirectBinding.execute(statement, in: db) { row in
                row.bind(1, symbol)
                row.bind(2, point.date.description)
                row.bind(3, point.close)
            }
        }
    }

    func pricesAndReturns(of symbol: String, from first: CalendarDate) throws -> [(PricePoint, Double?)] {
        let statement = try db.cachedStatement(sql: """
            SELECT p.date, p.close, r.simple FROM prices p
            LEFT JOIN returns r ON r.symbol = p.symbol AND r.date = p.date
            WHERE p.symbol = ?1
              AND p.date >= coalesce((SELECT max(date) FROM prices WHERE symbol = ?1 AND date < ?2), ?2)
            ORDER BY p.date
            """)
        var points: [(PricePoint, Double?)] = []
        try DirectBinding.query(statement, in: db) { row in
            row.bind(1, symbol)
            row.bind(2, first.description)
        } each: { columns in
            if let date = columns.withText(0, CalendarDate.init(utf8:)) {
                points.append((PricePoint(date: date, close: columns.double(1)), columns.isNull(2) ? nil : columns.double(2)))
            }
        }
        return points
    }

    func saveReturns(_ returns: [DailyReturn], of symbol: String) throws {
        let upsert = try db.cachedStatement(sql: """
            INSERT INTO returns (symbol, date, simple, log) VALUES (?, ?, ?, ?)
            ON CONFLICT (symbol, date) DO UPDATE SET simple = excluded.simple, log = excluded.log
            """)
        for r in returns {
            try DirectBinding.execute(upsert, in: db) { row in
                row.bind(1, symbol)
                row.bind(2, r.date.description)
                row.bind(3, r.simple)
                row.bind(4, r.log)
            }
        }
    }
}
