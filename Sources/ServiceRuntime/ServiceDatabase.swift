import EventCatalog
import Foundation
import GRDB
import MessageBus

/// A service's SQLite database (GRDB `DatabasePool`, WAL, busy timeout), shared by its api
/// and worker, with the outbox and inbox tables every service has. Its writes go through
/// ``WriteCombiner`` (group commit); the relay takes what they add to the outbox from
/// ``OutboxFeed``.
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

    /// - Parameters:
    ///   - admissionMaxWait: the longest a command waits at ``admission``.
    ///   - pageSize: the page size of the file when it is created (SQLite's 4,096 bytes when
    ///     `nil`; a file on record keeps its own).
    public init(path: String, admissionMaxWait: DispatchTimeInterval = .seconds(1), pageSize: Int? = nil,
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
            // The page size of a new file (an existing one keeps its own).
            if let pageSize, !db.configuration.readonly { try db.execute(sql: "PRAGMA page_size = \(pageSize)") }
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
            try db.execute(sql: Outbox.schema + Inbox.schema)
        }
        migrations(&migrator)
        try migrator.migrate(pool)
    }

    /// Runs `body` and stores the events raised in `context` in the outbox, in one transaction:
    /// the only way a handler's events reach the outbox. When `context` handles an event
    /// already recorded in the inbox, nothing runs and the result is `false`; otherwise the
    /// event id is recorded in the same transaction.
    @discardableResult
    public func write(_ context: HandlerContext, _ body: @escaping @Sendable (Database) throws -> Void) async throws -> Bool {
        try await write([context]) { db, _ in try body(db) }.first != nil
    }

    /// A batch handler's write: one transaction records in the inbox the events of `contexts`
    /// not handled before, runs `body` with their indices (in order; `body` does not run when
    /// there is none), and stores in the outbox what every context raised. Returns those
    /// indices. If `body` throws, nothing of the batch is stored.
    public func write(_ contexts: [HandlerContext],
                      _ body: @escaping @Sendable (Database, [Int]) throws -> Void) async throws -> [Int] {
        // A command (not an event handler) waits while the relay is behind (``WriteAdmission``).
        let command = contexts.contains(where: { $0.handledEventId == nil })
        if command { await admission.admit() }
        // An event handler's write (a worker's batch) goes in a transaction of its own; a
        // command's shares one with the concurrent requests (see `WriteCombiner`).
        let written = try await combiner.submit(alone: !command) { [relayId] db -> WriteCombiner.Written in
            var fresh: [Int] = []
            fresh.reserveCapacity(contexts.count)
            for (index, context) in contexts.enumerated() {
                if let id = context.handledEventId, try !Inbox.markHandled(id, in: db) { continue }
                fresh.append(index)
            }
            guard !fresh.isEmpty else { return .init(fresh: [], rows: []) }
            try body(db, fresh)
            return .init(fresh: fresh, rows: try Outbox.append(fresh.flatMap { contexts[$0].takeRaised() }, claimedBy: relayId, in: db))
        }
        return written.fresh
    }

    /// Stores the events raised in `context` in the outbox, in a transaction of their own (shared
    /// with concurrent writes): for events that change no state, such as the `operation_failed`
    /// of a dead-lettered event (which is not recorded in the inbox: it was not handled).
    func storeRaised(_ context: HandlerContext) async throws {
        try await store(context.takeRaised())
    }

    /// Stores `envelopes` in the outbox, in a transaction of their own (shared with
    /// concurrent writes).
    func store(_ envelopes: [EventEnvelope]) async throws {
        guard !envelopes.isEmpty else { return }
        _ = try await combiner.submit { [relayId] db in
            .init(fresh: [0], rows: try Outbox.append(envelopes, claimedBy: relayId, in: db))
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
    func claimOutboxRows(limit: Int, includeOwn: Bool, after: Int64 = 0,
                         staleAfter: Double) async throws -> [(Int64, EventEnvelope)] {
        try await combiner.submit { [relayId] db in
            .init(fresh: [], rows: [], claimed: try Outbox.claim(limit: limit, relay: relayId, includeOwn: includeOwn,
                                                                       after: after, staleAfter: staleAfter, in: db))
        }.claimed
    }

    /// Returns once every deletion asked for so far is committed.
    func commitOutboxRemovals() async throws {
        _ = try await combiner.submit { _ in .init(fresh: [], rows: []) }
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
