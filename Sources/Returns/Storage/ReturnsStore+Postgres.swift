import EventCatalog
import PostgresNIO
import ServiceRuntime

extension ReturnsStore {
    /// The tables of the returns service in its PostgreSQL schema: the SQLite ones, with
    /// `COLLATE "C"` so that symbols and dates sort by code point, as SQLite's do, whatever
    /// the database's locale.
    public static let postgresMigrations = [
        PostgresMigration("returns-v1", [
            """
            CREATE TABLE IF NOT EXISTS prices (
                symbol TEXT COLLATE "C" NOT NULL,
                date TEXT COLLATE "C" NOT NULL,
                close DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (symbol, date)
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS returns (
                symbol TEXT COLLATE "C" NOT NULL,
                date TEXT COLLATE "C" NOT NULL,
                simple DOUBLE PRECISION NOT NULL,
                log DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (symbol, date)
            )
            """,
        ]),
    ]
}

/// The returns service's tables in its PostgreSQL schema. Rows go in as arrays, one statement
/// per call (`unnest`), sent without waiting for its result (see `PostgresSession`).
struct PostgresReturnsTables: ReturnsTables {
    let session: PostgresSession

    func savePrices(_ points: [PricePoint], of symbol: String) throws {
        let batch = session.batch("returns.prices", SymbolDateRows.prices)
        for point in points { batch.add(symbol, point.date.description, point.close) }
    }

    func pricesAndReturns(of symbol: String, from first: CalendarDate) throws -> [(PricePoint, Double?)] {
        var binds = PostgresBindings(capacity: 2)
        binds.append(symbol)
        binds.append(first.description)
        return try session.query("""
            SELECT p.date, p.close, r.simple FROM prices p
            LEFT JOIN returns r ON r.symbol = p.symbol AND r.date = p.date
            WHERE p.symbol = $1
              AND p.date >= coalesce((SELECT max(date) FROM prices WHERE symbol = $1 AND date < $2), $2)
            ORDER BY p.date
            """, binds).compactMap { row in
            guard let date = CalendarDate(try row.column(0, as: String.self)) else { return nil }
            return (PricePoint(date: date, close: try row.column(1, as: Double.self)), try row.column(2, as: Double?.self))
        }
    }

    func saveReturns(_ returns: [DailyReturn], of symbol: String) throws {
        let batch = session.batch("returns.returns", SymbolDateRows.returns)
        for r in returns { batch.add(symbol, r.date.description, r.simple, r.log) }
    }

    func symbols() throws -> [String] {
        try session.query("SELECT DISTINCT symbol FROM prices ORDER BY symbol").map { try $0.column(0) }
    }

    func prices(of symbol: String, from: CalendarDate?, to: CalendarDate?) throws -> [PricePoint]? {
        guard try known(symbol) else { return nil }
        return try session.query("""
            SELECT date, close FROM prices WHERE symbol = $1 AND date >= $2 AND date <= $3 ORDER BY date
            """, range(symbol, from, to)).compactMap { row in
            guard let date = CalendarDate(try row.column(0, as: String.self)) else { return nil }
            return PricePoint(date: date, close: try row.column(1))
        }
    }

    func returns(of symbol: String, from: CalendarDate?, to: CalendarDate?, log: Bool) throws -> [DatedValue]? {
        guard try known(symbol) else { return nil }
        let column = log ? "log" : "simple"
        return try session.query("""
            SELECT date, \(column) FROM returns WHERE symbol = $1 AND date >= $2 AND date <= $3 ORDER BY date
            """, range(symbol, from, to)).compactMap { row in
            guard let date = CalendarDate(try row.column(0, as: String.self)) else { return nil }
            return DatedValue(date: date, value: try row.column(1))
        }
    }

    private func range(_ symbol: String, _ from: CalendarDate?, _ to: CalendarDate?) -> PostgresBindings {
        var binds = PostgresBindings(capacity: 3)
        binds.append(symbol)
        binds.append(from?.description ?? "0000-00-00")
        binds.append(to?.description ?? "9999-99-99")
        return binds
    }

    private func known(_ symbol: String) throws -> Bool {
        try !session.query("SELECT 1 FROM prices WHERE symbol = $1 LIMIT 1", PostgresBindings(symbol)).isEmpty
    }
}

/// Rows of one table keyed by (symbol, date), written in one transaction (by every write
/// sharing it) and upserted in one statement: `columns` doubles per row beside the key. A
/// key written twice keeps its last values, as one upsert after the other would (one
/// statement may not update a row twice).
final class SymbolDateRows: PostgresRowBatch {
    private let sql: String
    private var symbols: [String] = [], dates: [String] = []
    private var values: [[Double]]
    private var position: [String: Int] = [:]

    /// `sql` takes the symbols as `$1::text[]`, the dates as `$2::text[]` and each column of
    /// values as `$3::float8[]`, `$4::float8[]`…
    init(columns: Int, sql: String) {
        self.sql = sql
        values = Array(repeating: [], count: columns)
    }

    func add(_ symbol: String, _ date: String, _ row: Double...) {
        let key = symbol + "\u{0}" + date
        if let at = position[key] {
            for (column, value) in row.enumerated() { values[column][at] = value }
            return
        }
        position[key] = symbols.count
        symbols.append(symbol)
        dates.append(date)
        for (column, value) in row.enumerated() { values[column].append(value) }
    }

    func statement(into binds: inout PostgresBindings) -> String? {
        guard !symbols.isEmpty else { return nil }
        let first = binds.count + 1
        binds.append(symbols)
        binds.append(dates)
        for column in values { binds.append(column) }
        return PostgresSQL.renumbered(sql, from: first)
    }

    /// The prices of a transaction.
    static func prices() -> SymbolDateRows {
        SymbolDateRows(columns: 1, sql: """
            INSERT INTO prices (symbol, date, close) SELECT * FROM unnest($1::text[], $2::text[], $3::float8[])
            ON CONFLICT (symbol, date) DO UPDATE SET close = excluded.close
            """)
    }

    /// The returns of a transaction.
    static func returns() -> SymbolDateRows {
        SymbolDateRows(columns: 2, sql: """
            INSERT INTO returns (symbol, date, simple, log) SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[])
            ON CONFLICT (symbol, date) DO UPDATE SET simple = excluded.simple, log = excluded.log
            """)
    }
}
