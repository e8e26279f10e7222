import EventCatalog
import Foundation
import GRDB
import MessageBus
import Synchronization

/// A service's SQLite database (GRDB `DatabasePool`, WAL, busy timeout), shared by its api
/// and worker, with the outbox and inbox tables every service has.
///
/// ```swift
/// let database = try ServiceDatabase(path: config.databasePath) { migrator in
///     migrator.registerMigration("prices") { db in ... }
/// }
/// try await database.write(context) { db in
///     try db.execute(sql: "INSERT ...")
///     try context.raise(PricesRecorded(...))
/// }
/// ```
public final class ServiceDatabase: Sendable {
    /// The GRDB pool; only the service's store uses it.
    public let pool: DatabasePool
    /// Rung after each commit that added outbox rows.
    public let outboxBell = Doorbell()
    /// Concurrent `write(_:_:)`s share transactions (group commit).
    private let combiner: WriteCombiner

    public init(path: String, migrations: (inout DatabaseMigrator) -> Void = { _ in }) throws {
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var configuration = Configuration()
        // The api and the worker write the same file. SQLite's own busy timeout sleeps 1, 2,
        // 5, 10… ms between tries, so a writer that waits for the other's short transaction
        // loses milliseconds each time; this polls every 50–500 µs instead, for at least 10 s.
        configuration.busyMode = .callback { tries in
            usleep(tries < 20 ? 50 : 500)
            return tries < 20_000
        }
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        pool = try DatabasePool(path: path, configuration: configuration)
        combiner = WriteCombiner(pool: pool)
        var migrator = DatabaseMigrator()
        migrator.registerMigration("outbox-inbox") { db in
            try db.execute(sql: """
                CREATE TABLE IF NOT EXISTS outbox (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    event_id TEXT NOT NULL,
                    routing_key TEXT NOT NULL,
                    type TEXT NOT NULL,
                    correlation_id TEXT,
                    causation_id TEXT,
                    app_id TEXT NOT NULL,
                    timestamp REAL NOT NULL,
                    schema_version INTEGER NOT NULL,
                    traceparent TEXT,
                    content_type TEXT NOT NULL,
                    body BLOB NOT NULL,
                    claimed_by TEXT,
                    claimed_at REAL
                );
                CREATE TABLE IF NOT EXISTS inbox (
                    event_id TEXT PRIMARY KEY,
                    handled_at REAL NOT NULL
                );
                """)
        }
        migrations(&migrator)
        // api and worker may start together: the busy timeout serialises their migrations,
        // and every migration is written to be idempotent.
        try migrator.migrate(pool)
    }

    /// Runs `body` and stores the events raised in `context` in the outbox, in one transaction.
    /// When `context` handles an event already recorded in the inbox, nothing runs and the
    /// result is `false`; otherwise the event id is recorded in the same transaction.
    @discardableResult
    public func write(_ context: HandlerContext, _ body: @escaping @Sendable (Database) throws -> Void) async throws -> Bool {
        let handled = try await combiner.submit { db -> Bool in
            if let id = context.handledEventId?.lowercaseText {
                let seen = try Bool.fetchOne(
                    db.cachedStatement(sql: "SELECT 1 FROM inbox WHERE event_id = ?"), arguments: [id]) ?? false
                if seen { return false }
                try db.cachedStatement(sql: "INSERT INTO inbox (event_id, handled_at) VALUES (?, ?)")
                    .execute(arguments: [id, Date().timeIntervalSince1970])
            }
            try body(db)
            try Outbox.append(context.takeRaised(), in: db)
            return true
        }
        outboxBell.ring()
        return handled
    }

    /// Whether the database answers a query.
    public func isReadable() async -> Bool {
        (try? await pool.read { db in try Int.fetchOne(db, sql: "SELECT 1") }) == 1
    }
}

/// The outbox table: events waiting to be published.
public enum Outbox {
    /// Appends `envelopes` (in order) in `db`'s transaction.
    public static func append(_ envelopes: [EventEnvelope], in db: Database) throws {
        guard !envelopes.isEmpty else { return }
        let insert = try db.cachedStatement(sql: """
            INSERT INTO outbox (event_id, routing_key, type, correlation_id, causation_id, app_id,
                                timestamp, schema_version, traceparent, content_type, body)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        for e in envelopes {
            try insert.execute(arguments: [
                    e.eventId.lowercaseText, e.routingKey, e.type, e.correlationId, e.causationId,
                    e.appId, e.timestamp.timeIntervalSince1970, e.schemaVersion, e.traceparent,
                    e.contentType, e.body,
                ])
        }
    }

    /// Claims up to `limit` unclaimed rows (or rows whose claim is older than `staleAfter`
    /// seconds) for `relay`, oldest first, and returns them.
    static func claim(limit: Int, relay: String, staleAfter: Double, in db: Database) throws -> [(Int64, EventEnvelope)] {
        let now = Date().timeIntervalSince1970
        try db.cachedStatement(sql: """
            UPDATE outbox SET claimed_by = ?, claimed_at = ?
            WHERE seq IN (SELECT seq FROM outbox WHERE claimed_by IS NULL OR claimed_by = ? OR claimed_at < ?
                          ORDER BY seq LIMIT ?)
            """).execute(arguments: [relay, now, relay, now - staleAfter, limit])
        let rows = try Row.fetchAll(
            db.cachedStatement(sql: "SELECT * FROM outbox WHERE claimed_by = ? ORDER BY seq LIMIT ?"),
            arguments: [relay, limit])
        return rows.compactMap { row in
            guard let id = UUID(text: row["event_id"]) else { return nil }
            let envelope = EventEnvelope(
                eventId: id, routingKey: row["routing_key"], type: row["type"],
                correlationId: row["correlation_id"], causationId: row["causation_id"], appId: row["app_id"],
                timestamp: Date(timeIntervalSince1970: row["timestamp"]), schemaVersion: row["schema_version"],
                traceparent: row["traceparent"], contentType: row["content_type"], body: row["body"])
            return (row["seq"], envelope)
        }
    }

    /// Deletes published rows.
    static func remove(_ seqs: [Int64], in db: Database) throws {
        for chunk in stride(from: 0, to: seqs.count, by: 500) {
            let part = Array(seqs[chunk..<min(seqs.count, chunk + 500)])
            let marks = part.map { _ in "?" }.joined(separator: ",")
            try db.execute(sql: "DELETE FROM outbox WHERE seq IN (\(marks))", arguments: StatementArguments(part))
        }
    }

    /// Rows waiting to be published.
    public static func depth(in db: Database) throws -> Int {
        try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM outbox") ?? 0
    }
}

/// A publisher that stores events in the outbox (its own transaction) for the relay to send:
/// the bus's publisher for events a handler raised without storing them itself.
public struct OutboxPublisher: EventPublisher {
    let database: ServiceDatabase

    public init(database: ServiceDatabase) { self.database = database }

    public func publish(_ envelopes: [EventEnvelope]) async throws {
        try await database.pool.write { db in try Outbox.append(envelopes, in: db) }
        database.outboxBell.ring()
    }
}

/// Group commit: writes that arrive while another is committing share the next transaction,
/// each in a savepoint of its own, so one that throws is rolled back alone and the others
/// commit. Each caller resumes once its transaction has committed (a 202 still means stored).
/// One batch per turn on the writer queue, so the relay's writes interleave under load.
final class WriteCombiner: Sendable {
    typealias Work = @Sendable (Database) throws -> Bool

    private struct Pending: Sendable {
        let work: Work
        let continuation: CheckedContinuation<Bool, any Error>
    }

    private struct State {
        var pending: [Pending] = []
        var scheduled = false
    }

    private let pool: DatabasePool
    private let state = Mutex(State())
    private let maxBatch: Int

    init(pool: DatabasePool, maxBatch: Int = 128) {
        self.pool = pool
        self.maxBatch = maxBatch
    }

    func submit(_ work: @escaping Work) async throws -> Bool {
        try await withCheckedThrowingContinuation { continuation in
            let schedule = state.withLock { state -> Bool in
                state.pending.append(Pending(work: work, continuation: continuation))
                defer { state.scheduled = true }
                return !state.scheduled
            }
            if schedule { scheduleBatch() }
        }
    }

    private func scheduleBatch() {
        pool.asyncWriteWithoutTransaction { [self] db in
            let batch = state.withLock { state -> [Pending] in
                let batch = Array(state.pending.prefix(maxBatch))
                state.pending.removeFirst(batch.count)
                return batch
            }
            var results = [Result<Bool, any Error>]()
            do {
                try db.inTransaction(.immediate) {
                    results = batch.count == 1
                        ? [.success(try batch[0].work(db))]  // alone: its error rolls back the transaction
                        : batch.map { pending in
                            var result: Result<Bool, any Error> = .success(false)
                            do {
                                try db.inSavepoint {
                                    result = .success(try pending.work(db))
                                    return .commit
                                }
                            } catch {
                                result = .failure(error)
                            }
                            return result
                        }
                    return .commit
                }
            } catch {
                results = batch.map { _ in .failure(error) }
            }
            for (pending, result) in zip(batch, results) { pending.continuation.resume(with: result) }
            let more = state.withLock { state -> Bool in
                if state.pending.isEmpty { state.scheduled = false }
                return !state.pending.isEmpty
            }
            if more { scheduleBatch() }
        }
    }
}
