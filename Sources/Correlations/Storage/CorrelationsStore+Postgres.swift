import EventCatalog
import NIOCore
import PostgresNIO
import ServiceRuntime

extension CorrelationsStore {
    /// The tables of the correlations service in its PostgreSQL schema: the SQLite ones as
    /// they are after every SQLite migration (a new schema starts from rows of cells), with
    /// `COLLATE "C"` so that symbols sort by code point, as SQLite's do. `window` is a
    /// reserved word in PostgreSQL: that column is quoted.
    public static let postgresMigrations = [
        PostgresMigration("correlations-v1", [
            """
            CREATE TABLE IF NOT EXISTS returns (
                symbol TEXT COLLATE "C" NOT NULL,
                date INTEGER NOT NULL,
                value DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (symbol, date)
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS symbols (
                symbol TEXT COLLATE "C" PRIMARY KEY,
                version BIGINT NOT NULL,
                idx INTEGER NOT NULL UNIQUE
            )
            """,
            "CREATE TABLE IF NOT EXISTS windows (\"window\" INTEGER PRIMARY KEY)",
            "INSERT INTO windows (\"window\") SELECT unnest(ARRAY[\(defaultWindows.map(String.init).joined(separator: ", "))]) ON CONFLICT DO NOTHING",
            """
            CREATE TABLE IF NOT EXISTS correlation_rows (
                "window" INTEGER NOT NULL,
                idx INTEGER NOT NULL,
                cells BYTEA NOT NULL,
                shared BYTEA,
                PRIMARY KEY ("window", idx)
            )
            """,
        ]),
    ]
}

/// The correlations service's tables in its PostgreSQL schema. Writes are sent without
/// waiting for their result (see `PostgresSession`): a backfill's rows stream to the server
/// while the next ones are computed.
struct PostgresCorrelationsTables: CorrelationsTables {
    let session: PostgresSession

    func track(window: Int) throws {
        session.send("INSERT INTO windows (\"window\") VALUES ($1) ON CONFLICT DO NOTHING", PostgresBindings(window))
    }

    func trackedWindows() throws -> [Int] {
        try session.query("SELECT \"window\" FROM windows ORDER BY \"window\"").map { Int(try $0.column(0, as: Int32.self)) }
    }

    func versions() throws -> [(String, Int64)] {
        try session.query("SELECT symbol, version FROM symbols").map { (try $0.column(0), try $0.column(1)) }
    }

    func load(_ symbol: String, limit: Int?) throws -> SeriesCache.Entry {
        var binds = PostgresBindings(capacity: 2)
        binds.append(symbol)
        binds.append(limit)
        var days: [Int32] = [], values: [Double] = []
        for row in try session.query("""
            SELECT date, value FROM (SELECT date, value FROM returns WHERE symbol = $1 ORDER BY date DESC LIMIT $2) latest
            ORDER BY date
            """, binds) {
            days.append(try row.column(0))
            values.append(try row.column(1))
        }
        let series = ReturnSeries(days: days, values: values)
        return SeriesCache.Entry(series: series, complete: limit.map { series.count < $0 } ?? true)
    }

    func version(of symbol: String) throws -> Int64? {
        try session.query("SELECT version FROM symbols WHERE symbol = $1", PostgresBindings(symbol)).first?.column(0)
    }

    func saveReturns(_ returns: [DatedValue], of symbol: String, version: Int64) throws {
        if !returns.isEmpty {
            // One row per date (the last value of a date given twice, as SQLite's upserts leave
            // it): one statement may not update a row twice.
            var last: [Int32: Int] = [:]
            for (i, r) in returns.enumerated() { last[Int32(r.date.daysSinceEpoch)] = i }
            let kept = returns.indices.filter { last[Int32(returns[$0].date.daysSinceEpoch)] == $0 }
            var binds = PostgresBindings(capacity: 3)
            binds.append(symbol)
            binds.append(kept.map { Int32(returns[$0].date.daysSinceEpoch) })
            binds.append(kept.map { returns[$0].value })
            session.send("""
                INSERT INTO returns (symbol, date, value) SELECT $1, d, v FROM unnest($2::int4[], $3::float8[]) AS r(d, v)
                ON CONFLICT (symbol, date) DO UPDATE SET value = excluded.value
                """, binds)
        }
        var binds = PostgresBindings(capacity: 2)
        binds.append(symbol)
        binds.append(version)
        session.send("""
            INSERT INTO symbols (symbol, version, idx) VALUES ($1, $2, (SELECT coalesce(max(idx) + 1, 0) FROM symbols))
            ON CONFLICT (symbol) DO UPDATE SET version = $2
            """, binds)
    }

    func symbolCount() throws -> Int {
        try session.query("SELECT count(*) FROM symbols").first?.column(0, as: Int.self) ?? 0
    }

    func lastDay(of symbol: String) throws -> Int32? {
        try session.query("SELECT max(date) FROM returns WHERE symbol = $1", PostgresBindings(symbol)).first?.column(0, as: Int32?.self)
    }

    func symbolsByIndex() throws -> [String] {
        try session.query("SELECT symbol FROM symbols ORDER BY idx").map { try $0.column(0) }
    }

    func indices(of symbols: [String]) throws -> [String: Int] {
        var index: [String: Int] = [:]
        for row in try session.query("SELECT symbol, idx FROM symbols WHERE symbol = ANY($1)", PostgresBindings(Array(Set(symbols)))) {
            index[try row.column(0)] = Int(try row.column(1, as: Int32.self))
        }
        return index
    }

    func row(window: Int, index: Int) throws -> CorrelationRow? {
        var binds = PostgresBindings(capacity: 2)
        binds.append(Int32(window))
        binds.append(Int32(index))
        guard let row = try session.query("SELECT cells, shared FROM correlation_rows WHERE \"window\" = $1 AND idx = $2", binds).first else {
            return nil
        }
        let cells = try row.column(0, as: ByteBuffer.self)
        let shared = try row.column(1, as: ByteBuffer?.self)
        return CorrelationRow(cells: Array(cells.readableBytesView), shared: shared.map { Array($0.readableBytesView) })
    }

    func saveRow(window: Int, index: Int, _ row: CorrelationRow) throws {
        let stored = row.encoded()
        var binds = PostgresBindings(capacity: 4)
        binds.append(Int32(window))
        binds.append(Int32(index))
        binds.append(ByteBuffer(bytes: stored.cells))
        binds.append(stored.shared.map { ByteBuffer(bytes: $0) })
        session.send("""
            INSERT INTO correlation_rows ("window", idx, cells, shared) VALUES ($1, $2, $3, $4)
            ON CONFLICT ("window", idx) DO UPDATE SET cells = excluded.cells, shared = excluded.shared
            """, binds)
    }
}
