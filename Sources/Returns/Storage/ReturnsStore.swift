import EventCatalog
import Foundation
import GRDB
import MessageBus
import ServiceRuntime

/// The returns service's state and read views, in its SQLite database. Every write also
/// stores the events it raises (outbox), in the same transaction.
public struct ReturnsStore: Sendable {
    let database: ServiceDatabase

    public init(database: ServiceDatabase) { self.database = database }

    /// The tables of the returns service.
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

    /// Stores the prices of `command` and raises one `PricesRecorded` per symbol.
    public func record(_ command: RecordPrices, context: HandlerContext) async throws {
        try await database.write(context) { db in
            let statement = try db.cachedStatement(sql: """
                INSERT INTO prices (symbol, date, close) VALUES (?, ?, ?)
                ON CONFLICT (symbol, date) DO UPDATE SET close = excluded.close
                """)
            for symbol in command.prices.keys.sorted() {
                let points = command.prices[symbol]!
                for point in points {
                    try DirectBinding.execute(statement, in: db) { row in
                        row.bind(1, symbol)
                        row.bind(2, point.date.description)
                        row.bind(3, point.close)
                    }
                }
                try context.raise(PricesRecorded(symbol: symbol, firstDate: points.first!.date,
                                                 lastDate: points.last!.date, count: points.count))
            }
        }
    }

    /// Recomputes the returns of `event.symbol` from `event.firstDate` on, stores those that
    /// changed and raises `ReturnsCalculated` with them (possibly none). A redelivered event
    /// (already in the inbox) changes nothing and raises nothing.
    @discardableResult
    public func recalculate(after event: PricesRecorded, context: HandlerContext) async throws -> Bool {
        try await database.write(context) { db in
            let first = event.firstDate.description
            let previous = try String.fetchOne(db.cachedStatement(sql: """
                SELECT date FROM prices WHERE symbol = ? AND date < ? ORDER BY date DESC LIMIT 1
                """), arguments: [event.symbol, first])
            let rows = try Row.fetchAll(db.cachedStatement(sql: """
                SELECT date, close FROM prices WHERE symbol = ? AND date >= ? ORDER BY date
                """), arguments: [event.symbol, previous ?? first])
            let prices = rows.compactMap { row -> PricePoint? in
                guard let date = CalendarDate(row["date"] as String) else { return nil }
                return PricePoint(date: date, close: row["close"])
            }
            let computed = ReturnsMath.dailyReturns(prices).filter { $0.date >= event.firstDate }
            var existing: [String: Double] = [:]
            for row in try Row.fetchAll(
                db.cachedStatement(sql: "SELECT date, simple FROM returns WHERE symbol = ? AND date >= ?"),
                arguments: [event.symbol, first]) {
                existing[row["date"]] = row["simple"]
            }
            let upsert = try db.cachedStatement(sql: """
                INSERT INTO returns (symbol, date, simple, log) VALUES (?, ?, ?, ?)
                ON CONFLICT (symbol, date) DO UPDATE SET simple = excluded.simple, log = excluded.log
                """)
            var changed: [DatedValue] = []
            for r in computed where existing[r.date.description] != r.simple {
                try DirectBinding.execute(upsert, in: db) { row in
                    row.bind(1, event.symbol)
                    row.bind(2, r.date.description)
                    row.bind(3, r.simple)
                    row.bind(4, r.log)
                }
                changed.append(DatedValue(date: r.date, value: r.simple))
            }
            try context.raise(ReturnsCalculated(symbol: event.symbol, returns: changed))
        }
    }

    /// Every symbol with prices, sorted.
    public func symbols() async throws -> [String] {
        try await database.pool.read { db in
            try String.fetchAll(db, sql: "SELECT DISTINCT symbol FROM prices ORDER BY symbol")
        }
    }

    /// The prices of `symbol` in `[from, to]`, or `nil` when the symbol has none at all.
    public func prices(of symbol: String, from: CalendarDate?, to: CalendarDate?) async throws -> [PricePoint]? {
        try await database.pool.read { db in
            guard try Self.known(symbol, db) else { return nil }
            return try Row.fetchAll(db, sql: """
                SELECT date, close FROM prices WHERE symbol = ? AND date >= ? AND date <= ? ORDER BY date
                """, arguments: [symbol, from?.description ?? "0000-00-00", to?.description ?? "9999-99-99"])
                .compactMap { row in
                    CalendarDate(row["date"] as String).map { PricePoint(date: $0, close: row["close"]) }
                }
        }
    }

    /// The daily returns of `symbol` in `[from, to]`, or `nil` when the symbol has no prices.
    public func returns(of symbol: String, from: CalendarDate?, to: CalendarDate?, log: Bool) async throws -> [DatedValue]? {
        try await database.pool.read { db in
            guard try Self.known(symbol, db) else { return nil }
            let column = log ? "log" : "simple"
            return try Row.fetchAll(db, sql: """
                SELECT date, \(column) AS value FROM returns
                WHERE symbol = ? AND date >= ? AND date <= ? ORDER BY date
                """, arguments: [symbol, from?.description ?? "0000-00-00", to?.description ?? "9999-99-99"])
                .compactMap { row in
                    CalendarDate(row["date"] as String).map { DatedValue(date: $0, value: row["value"]) }
                }
        }
    }

    private static func known(_ symbol: String, _ db: Database) throws -> Bool {
        try Bool.fetchOne(db, sql: "SELECT 1 FROM prices WHERE symbol = ? LIMIT 1", arguments: [symbol]) ?? false
    }
}
