import EventCatalog
import Foundation
import GRDB
import Handoff
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
    /// Rung after each commit that added outbox rows (once per shared transaction).
    public let outboxBell = Doorbell()
    /// Where commands wait while the relay is behind a broker taking its messages.
    public let admission: WriteAdmission
    /// The claim this process's relay puts on the outbox rows its writes add.
    public let relayId = "relay-" + UUID().lowercaseText
    /// Concurrent `write(_:_:)`s share transactions (group commit).
    private let combiner: WriteCombiner
    /// Checkpoints the WAL off the commit path.
    let checkpointer: WALCheckpointer

    /// - Parameter admissionMaxWait: the longest a command waits at ``admission``.
    public init(path: String, admissionMaxWait: DispatchTimeInterval = .seconds(1),
                migrations: (inout DatabaseMigrator) -> Void = { _ in }) throws {
        admission = WriteAdmission(maxWait: admissionMaxWait)
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let checkpointer = WALCheckpointer(path: path)
        self.checkpointer = checkpointer
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
            // Savepoint (statement) journals in memory: group commit opens one per write.
            try db.execute(sql: "PRAGMA temp_store = MEMORY")
            // Page caches: 1 MiB for the writer, 256 KiB for each reader (views, and the
            // outbox count, a scan of every row waiting), instead of SQLite's 2 MiB each —
            // the processes stay within their memory budget, and the OS caches the file.
            try db.execute(sql: "PRAGMA cache_size = \(db.configuration.readonly ? -256 : -1024)")
            // The writer's commits leave checkpoints to `WALCheckpointer`.
            if !db.configuration.readonly { checkpointer.install(on: db) }
        }
        // Opening a new file (WAL mode is set then) and migrating it happen under an exclusive
        // lock on a file beside it, so any number of processes may start at once: GRDB's
        // migrator reads what was applied before its write transaction, so two processes
        // that both saw an empty file ran the same migration, and one failed on the UNIQUE
        // identifier of grdb_migrations. Under the lock the second reads what the first applied.
        let lock = try MigrationLock(path: path + ".lock")
        defer { lock.release() }
        pool = try DatabasePool(path: path, configuration: configuration)
        combiner = WriteCombiner(pool: pool, bell: outboxBell)
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
        try migrator.migrate(pool)
    }

    /// Runs `body` and stores the events raised in `context` in the outbox, in one transaction.
    /// When `context` handles an event already recorded in the inbox, nothing runs and the
    /// result is `false`; otherwise the event id is recorded in the same transaction.
    @discardableResult
    public func write(_ context: HandlerContext, _ body: @escaping @Sendable (Database) throws -> Void) async throws -> Bool {
        // A command (not an event handler) waits while the relay is behind (``WriteAdmission``).
        if context.handledEventId == nil { await admission.admit() }
        let written = try await combiner.submit { [relayId] db -> WriteCombiner.Written in
            if let id = context.handledEventId?.lowercaseText {
                let seen = try Bool.fetchOne(
                    db.cachedStatement(sql: "SELECT 1 FROM inbox WHERE event_id = ?"), arguments: [id]) ?? false
                if seen { return .init(handled: false, rows: []) }
                try DirectBinding.execute(db.cachedStatement(sql: "INSERT INTO inbox (event_id, handled_at) VALUES (?, ?)"),
                                          in: db) { row in
                    row.bind(1, id)
                    row.bind(2, Date().timeIntervalSince1970)
                }
            }
            try body(db)
            return .init(handled: true, rows: try Outbox.append(context.takeRaised(), claimedBy: relayId, in: db))
        }
        return written.handled
    }

    /// Stores `envelopes` in the outbox (a transaction of their own, shared with concurrent writes).
    public func enqueue(_ envelopes: [EventEnvelope]) async throws {
        guard !envelopes.isEmpty else { return }
        _ = try await combiner.submit { [relayId] db in
            .init(handled: true, rows: try Outbox.append(envelopes, claimedBy: relayId, in: db))
        }
    }

    /// The outbox rows this process committed since the last call, in commit order, and
    /// whether some were left out (more than ``OutboxFeed/limit`` waited, and the feed closed
    /// itself): those are only in the table, claimed by ``relayId``.
    func takeCommittedOutboxRows() -> (rows: [(Int64, EventEnvelope)], overflowed: Bool) {
        combiner.feed.withLock { feed in
            defer {
                feed.rows = []
                feed.overflowed = false
            }
            return (feed.rows, feed.overflowed)
        }
    }

    /// Whether committed outbox rows are handed to the relay in memory (otherwise they are
    /// only in the table, claimed by ``relayId``, and the relay sweeps them from there).
    var outboxFeedOpen: Bool {
        get { combiner.feed.withLock { !$0.closed } }
        set { combiner.feed.withLock { $0.closed = !newValue } }
    }

    /// Deletes published outbox rows in the next shared transaction (or, with no write
    /// coming, in one of their own within 20 ms).
    func removeFromOutbox(_ seqs: [Int64]) {
        combiner.delete(seqs)
    }

    /// Claims rows for a sweep of the relay (see ``Outbox/claim``) in the next shared
    /// transaction, after the deletions asked for so far: a sweep never takes again what the
    /// relay has published.
    func claimOutboxRows(limit: Int, includeOwn: Bool, staleAfter: Double) async throws -> [(Int64, EventEnvelope)] {
        try await combiner.submit { [relayId] db in
            .init(handled: false, rows: [], claimed: try Outbox.claim(limit: limit, relay: relayId, includeOwn: includeOwn,
                                                                       staleAfter: staleAfter, in: db))
        }.claimed
    }

    /// Returns once every deletion asked for so far is committed.
    func commitOutboxRemovals() async throws {
        _ = try await combiner.submit { _ in .init(handled: false, rows: []) }
    }

    /// Drops what SQLite caches (page caches, prepared statements; reader connections close
    /// and open again when needed), on each connection's queue once it is free: after a burst,
    /// the writer's 1 MiB cache and the readers' are memory nothing uses until the next one.
    public func releaseMemory() {
        pool.releaseMemoryEventually()
        checkpointer.releaseMemory()
    }

    /// Whether the database answers a query.
    public func isReadable() async -> Bool {
        (try? await pool.read { db in try Int.fetchOne(db, sql: "SELECT 1") }) == 1
    }
}

/// The outbox table: events waiting to be published.
public enum Outbox {
    /// Appends `envelopes` (in order) in `db`'s transaction, claimed by `relay` when given,
    /// and returns them with their sequence numbers.
    @discardableResult
    public static func append(_ envelopes: [EventEnvelope], claimedBy relay: String? = nil,
                              in db: Database) throws -> [(Int64, EventEnvelope)] {
        guard !envelopes.isEmpty else { return [] }
        let insert = try db.cachedStatement(sql: """
            INSERT INTO outbox (event_id, routing_key, type, correlation_id, causation_id, app_id,
                                timestamp, schema_version, traceparent, content_type, body, claimed_by, claimed_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        let claimedAt = relay.map { _ in Date().timeIntervalSince1970 }
        var rows: [(Int64, EventEnvelope)] = []
        rows.reserveCapacity(envelopes.count)
        for e in envelopes {
            try DirectBinding.execute(insert, in: db) { row in
                row.bind(1, e.eventId.lowercaseText)
                row.bind(2, e.routingKey)
                row.bind(3, e.type)
                row.bind(4, e.correlationId)
                row.bind(5, e.causationId)
                row.bind(6, e.appId)
                row.bind(7, e.timestamp.timeIntervalSince1970)
                row.bind(8, e.schemaVersion)
                row.bind(9, e.traceparent)
                row.bind(10, e.contentType)
                row.bind(11, e.body)
                row.bind(12, relay)
                row.bind(13, claimedAt)
            }
            rows.append((db.lastInsertedRowID, e))
        }
        return rows
    }

    /// Claims for a sweep of `relay` up to `limit` rows, oldest first, and returns them: rows
    /// nobody claimed, rows whose claim is older than `staleAfter` seconds, and — with
    /// `includeOwn` — every row `relay` claimed (when it wrote them, or in an earlier sweep).
    /// Swept rows are marked `<relay>.sweep`, apart from the rows the relay has in memory.
    static func claim(limit: Int, relay: String, includeOwn: Bool, staleAfter: Double,
                      in db: Database) throws -> [(Int64, EventEnvelope)] {
        let now = Date().timeIntervalSince1970
        let sweep = relay + ".sweep"
        try db.cachedStatement(sql: """
            UPDATE outbox SET claimed_by = ?, claimed_at = ?
            WHERE seq IN (SELECT seq FROM outbox
                          WHERE claimed_by IS NULL
                             OR (claimed_by IN (?, ?) AND ?)
                             OR (claimed_by NOT IN (?, ?) AND claimed_at < ?)
                          ORDER BY seq LIMIT ?)
            """).execute(arguments: [sweep, now, relay, sweep, includeOwn, relay, sweep, now - staleAfter, limit])
        // Columns by position, not by name: GRDB lowercases a name on every lookup, which was a
        // large part of a sweep's CPU with thousands of rows (a backlog after an outage).
        let rows = try Row.fetchAll(
            db.cachedStatement(sql: """
                SELECT seq, event_id, routing_key, type, correlation_id, causation_id, app_id, timestamp,
                       schema_version, traceparent, content_type, body
                FROM outbox WHERE claimed_by = ? ORDER BY seq LIMIT ?
                """),
            arguments: [sweep, limit])
        return rows.compactMap { row in
            guard let id = UUID(text: row[1]) else { return nil }
            let envelope = EventEnvelope(
                eventId: id, routingKey: row[2], type: row[3],
                correlationId: row[4], causationId: row[5], appId: row[6],
                timestamp: Date(timeIntervalSince1970: row[7]), schemaVersion: row[8],
                traceparent: row[9], contentType: row[10], body: row[11])
            return (row[0], envelope)
        }
    }

    /// Deletes published rows.
    static func remove(_ seqs: [Int64], in db: Database) throws {
        guard !seqs.isEmpty else { return }
        // One prepared statement whatever the count: the sequence numbers go in as a JSON array.
        var list = "["
        list.reserveCapacity(seqs.count * 8 + 2)
        for (i, seq) in seqs.enumerated() {
            if i > 0 { list += "," }
            list += String(seq)
        }
        list += "]"
        try db.cachedStatement(sql: "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?))")
            .execute(arguments: [list])
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
        try await database.enqueue(envelopes)
    }
}

/// Outbox rows committed by this process and not yet taken by its relay.
struct OutboxFeed: Sendable {
    /// Beyond this many (the broker is slow or down, say), the feed closes: rows are left in
    /// the table only and the relay reads them back from there, so memory stays bounded.
    static let limit = 2_000
    var rows: [(Int64, EventEnvelope)] = []
    var overflowed = false
    /// Closed by an overflow or by the relay while it sweeps its own rows; opened by the relay.
    var closed = false

    mutating func add(_ more: [(Int64, EventEnvelope)]) {
        guard !more.isEmpty, !closed else { return }
        if rows.count + more.count > Self.limit {
            rows = []
            overflowed = true
            closed = true
        } else {
            rows.append(contentsOf: more)
        }
    }
}

/// Group commit: writes that arrive while another is committing share the next transaction,
/// each in a savepoint of its own, so one that throws is rolled back alone and the others
/// commit. Each caller resumes once its transaction has committed (a 202 still means stored).
/// The same transaction deletes the outbox rows the relay has published since the last one;
/// after it commits, the outbox rows it added go to the relay's feed, in commit order.
/// One batch per turn on the writer queue, so other writes interleave under load.
final class WriteCombiner: Sendable {
    struct Written: Sendable {
        /// `false`: the event was already handled (inbox), nothing ran.
        var handled: Bool
        /// Outbox rows added, with their sequence numbers (the relay's feed).
        var rows: [(Int64, EventEnvelope)]
        /// Outbox rows claimed for a sweep of the relay.
        var claimed: [(Int64, EventEnvelope)] = []
    }

    typealias Work = @Sendable (Database) throws -> Written

    private struct Pending: Sendable {
        let work: Work
        let continuation: CheckedContinuation<Written, any Error>
    }

    private struct State {
        var pending: [Pending] = []
        var deletions: [Int64] = []
        var scheduled = false
        /// A timer will commit the deletions if no write has by then.
        var deletionFlushArmed = false

        /// Whether deletions wait with no transaction and no timer coming: arm one.
        mutating func armDeletionFlush() -> Bool {
            guard !scheduled, !deletionFlushArmed, !deletions.isEmpty else { return false }
            deletionFlushArmed = true
            return true
        }
    }

    private let pool: DatabasePool
    /// Rung after a transaction that added outbox rows committed.
    private let bell: Doorbell
    /// Outbox rows committed, in commit order, for the relay.
    let feed = Mutex(OutboxFeed())
    private let state = Mutex(State())
    private let maxBatch: Int

    private let deletionDelay: DispatchTimeInterval

    init(pool: DatabasePool, bell: Doorbell, maxBatch: Int = 128, deletionDelay: DispatchTimeInterval = .milliseconds(20)) {
        self.pool = pool
        self.bell = bell
        self.maxBatch = maxBatch
        self.deletionDelay = deletionDelay
    }

    func submit(_ work: @escaping Work) async throws -> Written {
        try await withCheckedThrowingContinuation { continuation in
            let schedule = state.withLock { state -> Bool in
                state.pending.append(Pending(work: work, continuation: continuation))
                defer { state.scheduled = true }
                return !state.scheduled
            }
            if schedule { scheduleBatch() }
        }
    }

    /// Deletes outbox rows in the next transaction; with no write within `deletionDelay`,
    /// in one of their own (a deletion alone is not worth a commit: under a steady trickle of
    /// writes, each one would otherwise cost a second transaction).
    func delete(_ seqs: [Int64]) {
        guard !seqs.isEmpty else { return }
        let arm = state.withLock { state -> Bool in
            state.deletions.append(contentsOf: seqs)
            return state.armDeletionFlush()
        }
        if arm { flushDeletionsLater() }
    }

    private func flushDeletionsLater() {
        DispatchQueue.global().asyncAfter(deadline: .now() + deletionDelay) { [self] in
            let schedule = state.withLock { state -> Bool in
                state.deletionFlushArmed = false
                guard !state.scheduled, !state.deletions.isEmpty else { return false }
                state.scheduled = true
                return true
            }
            if schedule { scheduleBatch() }
        }
    }

    /// `work` in a savepoint of the open transaction: its error rolls back its own changes
    /// and is its result. What GRDB's `inSavepoint` does, with the savepoint statements
    /// prepared once (it parses them on every call: a cost per write under group commit).
    /// Throws when the savepoint cannot be rolled back: the transaction is lost.
    private static func inSavepoint(_ db: Database, _ work: () throws -> Written) throws -> Result<Written, any Error> {
        try db.cachedStatement(sql: "SAVEPOINT write").execute()
        do {
            let written = try work()
            try db.cachedStatement(sql: "RELEASE SAVEPOINT write").execute()
            return .success(written)
        } catch {
            try db.cachedStatement(sql: "ROLLBACK TRANSACTION TO SAVEPOINT write").execute()
            try db.cachedStatement(sql: "RELEASE SAVEPOINT write").execute()
            return .failure(error)
        }
    }

    private func scheduleBatch() {
        pool.asyncWriteWithoutTransaction { [self] db in
            let (batch, deletions) = state.withLock { state -> ([Pending], [Int64]) in
                let batch = Array(state.pending.prefix(maxBatch))
                state.pending.removeFirst(batch.count)
                defer { state.deletions.removeAll() }
                return (batch, state.deletions)
            }
            var results = [Result<Written, any Error>]()
            var failed = false
            var added = false
            do {
                try db.inTransaction(.immediate) {
                    try Outbox.remove(deletions, in: db)
                    results = batch.count == 1
                        ? [.success(try batch[0].work(db))]  // alone: its error rolls back the transaction
                        : try batch.map { pending in try Self.inSavepoint(db) { try pending.work(db) } }
                    return .commit
                }
                added = feed.withLock { feed -> Bool in
                    var added = false
                    for case .success(let written) in results where !written.rows.isEmpty {
                        feed.add(written.rows)
                        added = true
                    }
                    return added
                }
            } catch {
                results = batch.map { _ in .failure(error) }
                failed = true
                // Not deleted: kept for the next transaction (a row left behind would only be
                // published again), which the next write or deletion starts.
                if !deletions.isEmpty { state.withLock { $0.deletions.insert(contentsOf: deletions, at: 0) } }
            }
            // A request waiting for this commit goes on here, up to its next suspension:
            // its response is built and its connection resumed without another thread hop
            // (see `InlineExecutor`; no lock is held, and nothing there calls GRDB synchronously).
            // The relay too, once they are answered: it takes the rows in memory and hands
            // them to the publisher thread (it never waits here; see `OutboxRelay`).
            InlineExecutor.inline {
                for (pending, result) in zip(batch, results) { pending.continuation.resume(with: result) }
                if added { bell.ring() }
            }
            // Deletions asked for meanwhile wait for the next write, or the timer.
            let (more, arm) = state.withLock { state -> (Bool, Bool) in
                guard state.pending.isEmpty else { return (true, false) }
                state.scheduled = false
                return (false, !failed && state.armDeletionFlush())
            }
            if more { scheduleBatch() }
            if arm { flushDeletionsLater() }
        }
    }
}
