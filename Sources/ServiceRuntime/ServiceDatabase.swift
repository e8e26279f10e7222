import EventCatalog
import Foundation
import GRDB
import Logging
import MessageBus
import PostgresNIO
import Synchronization

/// What a service's store runs its SQL on inside a write or a read: the SQLite database (the
/// embedded default) or a PostgreSQL session (`STEGA_DATABASE_URL`). Each service's store
/// has one implementation of its tables for each; nothing above the store sees either.
public enum StoreConnection {
    case sqlite(Database)
    case postgres(PostgresSession)
}

/// A service's store — its state, read views, outbox and inbox — in one of two engines:
/// - a SQLite file (GRDB `DatabasePool`, WAL, busy timeout), shared by the service's api and
///   worker on one host; writes go through ``WriteCombiner`` (group commit);
/// - a PostgreSQL schema (``PostgresStore``), shared by any number of replicas: each write is
///   a transaction on a pooled connection, outbox rows are claimed with `FOR UPDATE SKIP
///   LOCKED`, and a worker's batches run one at a time across replicas (an advisory lock), as
///   they do on SQLite's single writer.
/// Either way the relay takes what the writes add to the outbox from ``OutboxFeed``.
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
    private enum Engine: Sendable {
        case sqlite(SQLiteEngine)
        case postgres(PostgresEngine)
    }

    private struct SQLiteEngine: Sendable {
        let pool: DatabasePool
        /// Concurrent `write(_:_:)`s share transactions (group commit).
        let combiner: WriteCombiner
        /// Checkpoints the WAL off the commit path.
        let checkpointer: WALCheckpointer
    }

    private final class PostgresEngine: Sendable {
        let store: PostgresStore
        /// Outbox rows committed by this process, for the relay.
        let feed = Mutex(OutboxFeed())
        /// The advisory lock a worker's batch takes: one service's event handlers apply one
        /// batch at a time across every replica, as on SQLite.
        let eventLock: String
        /// Commands share transactions.
        let combiner: PostgresWriteCombiner

        init(store: PostgresStore, relayId: String) {
            self.store = store
            eventLock = "stega.\(store.schema).events"
            combiner = PostgresWriteCombiner(store: store, relayId: relayId)
        }
    }

    private let engine: Engine
    /// Rung after each commit that added outbox rows (once per shared transaction).
    public let outboxBell = Doorbell()
    /// Where commands wait while the relay is behind a broker taking its messages.
    public let admission: WriteAdmission
    /// The claim this process's relay puts on the outbox rows its writes add.
    public let relayId = "relay-" + UUID().lowercaseText

    /// The SQLite pool (tests and the benchmark tool read the file through it).
    public var pool: DatabasePool {
        guard case .sqlite(let sqlite) = engine else { preconditionFailure("a PostgreSQL store has no SQLite pool") }
        return sqlite.pool
    }

    /// The SQLite file's WAL checkpointer (tests).
    var checkpointer: WALCheckpointer {
        guard case .sqlite(let sqlite) = engine else { preconditionFailure("a PostgreSQL store has no WAL") }
        return sqlite.checkpointer
    }

    /// What the store is, for logs: the SQLite file or the PostgreSQL server and schema.
    public let location: String

    /// - Parameters:
    ///   - admissionMaxWait: the longest a command waits at ``admission``.
    ///   - pageSize: the page size of the file when it is created (SQLite's 4,096 bytes when
    ///     `nil`; a file on record keeps its own).
    public init(path: String, admissionMaxWait: DispatchTimeInterval = .seconds(1), pageSize: Int? = nil,
                migrations: (inout DatabaseMigrator) -> Void = { _ in }) throws {
        admission = WriteAdmission(maxWait: admissionMaxWait)
        location = path
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let checkpointer = WALCheckpointer(path: path)
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
        let pool = try DatabasePool(path: path, configuration: configuration)
        engine = .sqlite(SQLiteEngine(pool: pool, combiner: WriteCombiner(pool: pool, bell: outboxBell), checkpointer: checkpointer))
        var migrator = DatabaseMigrator()
        migrator.registerMigration("outbox-inbox") { db in
            try db.execute(sql: Outbox.schema + Inbox.schema)
        }
        migrations(&migrator)
        try migrator.migrate(pool)
    }

    /// A service's store in PostgreSQL: schema `schema` (created if missing), migrated with
    /// `migrations` after the outbox and inbox (under an advisory lock: replicas may start at
    /// once). Blocks until PostgreSQL has answered; throws ``StoreUnavailable`` when it does
    /// not.
    public init(postgres settings: PostgresSettings, schema: String, admissionMaxWait: DispatchTimeInterval = .seconds(1),
                migrations: [PostgresMigration], logger: Logger = Logger(label: "stega.store")) throws {
        admission = WriteAdmission(maxWait: admissionMaxWait)
        location = "\(settings) schema \(schema)"
        let store = try PostgresStore(settings: settings, schema: schema, logger: logger)
        try store.migrate([PostgresMigration("outbox-inbox", Outbox.postgresSchema + Inbox.postgresSchema)] + migrations)
        engine = .postgres(PostgresEngine(store: store, relayId: relayId))
    }

    /// Runs `body` and stores the events raised in `context` in the outbox, in one transaction:
    /// the only way a handler's events reach the outbox. When `context` handles an event
    /// already recorded in the inbox, nothing runs and the result is `false`; otherwise the
    /// event id is recorded in the same transaction.
    @discardableResult
    public func write(_ context: HandlerContext, _ body: @escaping @Sendable (StoreConnection) throws -> Void) async throws -> Bool {
        try await write([context]) { connection, _ in try body(connection) }.first != nil
    }

    /// A write on the SQLite file's connection directly (tests).
    @discardableResult
    public func writeSQLite(_ context: HandlerContext, _ body: @escaping @Sendable (Database) throws -> Void) async throws -> Bool {
        try await write(context) { connection in
            guard case .sqlite(let db) = connection else { preconditionFailure("not a SQLite store") }
            try body(db)
        }
    }

    /// A batch handler's write: one transaction records in the inbox the events of `contexts`
    /// not handled before, runs `body` with their indices (in order; `body` does not run when
    /// there is none), and stores in the outbox what every context raised. Returns those
    /// indices. If `body` throws, nothing of the batch is stored.
    public func write(_ contexts: [HandlerContext],
                      _ body: @escaping @Sendable (StoreConnection, [Int]) throws -> Void) async throws -> [Int] {
        // A command (not an event handler) waits while the relay is behind (``WriteAdmission``).
        let command = contexts.contains(where: { $0.handledEventId == nil })
        if command { await admission.admit() }
        switch engine {
        case .sqlite(let sqlite):
            // An event handler's write (a worker's batch) goes in a transaction of its own; a
            // command's shares one with the concurrent requests (see `WriteCombiner`).
            let written = try await sqlite.combiner.submit(alone: !command) { [relayId] db -> WriteCombiner.Written in
                var fresh: [Int] = []
                fresh.reserveCapacity(contexts.count)
                for (index, context) in contexts.enumerated() {
                    if let id = context.handledEventId, try !Inbox.markHandled(id, in: db) { continue }
                    fresh.append(index)
                }
                guard !fresh.isEmpty else { return .init(fresh: [], rows: []) }
                try body(.sqlite(db), fresh)
                return .init(fresh: fresh, rows: try Outbox.append(fresh.flatMap { contexts[$0].takeRaised() }, claimedBy: relayId, in: db))
            }
            return written.fresh
        case .postgres(let postgres) where command:
            // Shares a transaction with the commands waiting (see `PostgresWriteCombiner`).
            let written = try await postgres.combiner.submit { session in
                let fresh = try Inbox.fresh(contexts, in: session)
                guard !fresh.isEmpty else { return ([], []) }
                do {
                    try body(.postgres(session), fresh)
                } catch {
                    // What it raised before failing is not kept (it may run again, alone).
                    for index in fresh { _ = contexts[index].takeRaised() }
                    throw error
                }
                return (fresh, fresh.flatMap { contexts[$0].takeRaised() })
            }
            if let rows = written.rows {
                committed(rows, postgres)
            } else {
                postgres.feed.withLock { $0.lose() }
                outboxBell.ring()
            }
            return written.fresh
        case .postgres(let postgres):
            let written = try await postgres.store.transaction(lock: postgres.eventLock) { [relayId] session in
                let fresh = try Inbox.fresh(contexts, in: session)
                guard !fresh.isEmpty else { return WriteCombiner.Written(fresh: [], rows: []) }
                try body(.postgres(session), fresh)
                return .init(fresh: fresh, rows: try Outbox.append(fresh.flatMap { contexts[$0].takeRaised() }, claimedBy: relayId, in: session))
            }
            committed(written.rows, postgres)
            return written.fresh
        }
    }

    /// Hands committed outbox rows to the relay.
    private func committed(_ rows: [(Int64, EventEnvelope)], _ postgres: PostgresEngine) {
        guard !rows.isEmpty else { return }
        postgres.feed.withLock { $0.add(rows) }
        outboxBell.ring()
    }

    /// Runs `body` on the store for a read (a SQLite reader, or a pooled PostgreSQL connection).
    public func read<T: Sendable>(_ body: @escaping @Sendable (StoreConnection) throws -> T) async throws -> T {
        switch engine {
        case .sqlite(let sqlite): return try await sqlite.pool.read { db in try body(.sqlite(db)) }
        case .postgres(let postgres): return try await postgres.store.withSession { session in try body(.postgres(session)) }
        }
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
        switch engine {
        case .sqlite(let sqlite):
            _ = try await sqlite.combiner.submit { [relayId] db in
                .init(fresh: [0], rows: try Outbox.append(envelopes, claimedBy: relayId, in: db))
            }
        case .postgres(let postgres):
            let rows = try await postgres.store.transaction { [relayId] session in
                try Outbox.append(envelopes, claimedBy: relayId, in: session)
            }
            committed(rows, postgres)
        }
    }

    /// The outbox rows this process committed since the last call, in commit order, and
    /// whether some were left out (more than ``OutboxFeed/limit`` waited, and the feed closed
    /// itself): those are only in the table, claimed by ``relayId``.
    func takeCommittedOutboxRows() -> (rows: [(Int64, EventEnvelope)], overflowed: Bool) {
        withFeed { feed in
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
        get { withFeed { !$0.closed } }
        set { withFeed { $0.closed = !newValue } }
    }

    private func withFeed<T>(_ body: (inout sending OutboxFeed) -> sending T) -> sending T {
        switch engine {
        case .sqlite(let sqlite): return sqlite.combiner.feed.withLock(body)
        case .postgres(let postgres): return postgres.feed.withLock(body)
        }
    }

    /// Deletes published outbox rows in the next shared transaction (or, with no write
    /// coming, in one of their own within 20 ms).
    func removeFromOutbox(_ seqs: [Int64]) {
        switch engine {
        case .sqlite(let sqlite): sqlite.combiner.delete(seqs)
        case .postgres(let postgres): postgres.combiner.removeFromOutbox(seqs)
        }
    }

    /// Claims rows for a sweep of the relay (see ``Outbox/claim``) in the next shared
    /// transaction, after the deletions asked for so far: a sweep never takes again what the
    /// relay has published.
    func claimOutboxRows(limit: Int, includeOwn: Bool, after: Int64 = 0,
                         staleAfter: Double) async throws -> [(Int64, EventEnvelope)] {
        switch engine {
        case .sqlite(let sqlite):
            return try await sqlite.combiner.submit { [relayId] db in
                .init(fresh: [], rows: [], claimed: try Outbox.claim(limit: limit, relay: relayId, includeOwn: includeOwn,
                                                                           after: after, staleAfter: staleAfter, in: db))
            }.claimed
        case .postgres(let postgres):
            return try await postgres.combiner.deletePublished { [relayId] session in
                try Outbox.claim(limit: limit, relay: relayId, includeOwn: includeOwn, after: after, staleAfter: staleAfter,
                                 in: session)
            }
        }
    }

    /// Returns once every deletion asked for so far is committed.
    func commitOutboxRemovals() async throws {
        switch engine {
        case .sqlite(let sqlite): _ = try await sqlite.combiner.submit { _ in .init(fresh: [], rows: []) }
        case .postgres(let postgres): try await postgres.combiner.deletePublished { _ in }
        }
    }

    /// Rows waiting in the outbox (every process's).
    func outboxDepth() async throws -> Int {
        try await read { connection in
            switch connection {
            case .sqlite(let db): return try Outbox.depth(in: db)
            case .postgres(let session): return try Outbox.depth(in: session)
            }
        }
    }

    /// Drops what SQLite caches (page caches, prepared statements; reader connections close
    /// and open again when needed), on each connection's queue once it is free: after a burst,
    /// the writer's 1 MiB cache and the readers' are memory nothing uses until the next one.
    public func releaseMemory() {
        guard case .sqlite(let sqlite) = engine else { return }
        sqlite.pool.releaseMemoryEventually()
        sqlite.checkpointer.releaseMemory()
    }

    /// Whether the store answers a query within `timeout` (a readiness probe answers in time
    /// even while every PostgreSQL connection waits on a server that went away).
    public func isReadable(timeout: Duration = .seconds(2)) async -> Bool {
        // Not a task group: it would wait for the read, which cannot be cut short.
        final class Once: Sendable {
            private let taken = Atomic<Bool>(false)
            func take() -> Bool { !taken.exchange(true, ordering: .acquiringAndReleasing) }
        }
        let once = Once()
        return await withCheckedContinuation { continuation in
            let answer: @Sendable (Bool) -> Void = { if once.take() { continuation.resume(returning: $0) } }
            Task {
                answer((try? await self.read { connection in
                    switch connection {
                    case .sqlite(let db): return try Int.fetchOne(db, sql: "SELECT 1")
                    case .postgres(let session): return try session.query("SELECT 1").first?.column(0, as: Int.self)
                    }
                }) == 1)
            }
            Task {
                try? await Task.sleep(for: timeout)
                answer(false)
            }
        }
    }

    /// Closes the store's connections (PostgreSQL; SQLite's close with the pool).
    public func close() {
        if case .postgres(let postgres) = engine { postgres.store.close() }
    }
}
