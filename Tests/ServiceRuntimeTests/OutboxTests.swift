import EventCatalog
import Foundation
import GRDB
import GRDBSQLite
import MessageBus
import MessageBusTesting
@testable import ServiceRuntime
import Synchronization
import Testing

/// A publisher that fails while `down` is set, then forwards to an in-memory transport.
final class FlakyPublisher: EventPublisher {
    let down = Atomic<Bool>(true)
    let failures = Atomic<Int>(0)
    let transport = InMemoryTransport()

    func publish(_ envelopes: [EventEnvelope]) async throws {
        if down.load(ordering: .relaxed) {
            failures.add(1, ordering: .relaxed)
            throw CancellationError()
        }
        try await transport.publish(envelopes)
    }
}

func temporaryDatabase() throws -> (ServiceDatabase, URL) {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-\(UUID().uuidString)")
    return (try ServiceDatabase(path: dir.appendingPathComponent("t.sqlite").path), dir)
}

@Suite("Outbox and inbox")
struct OutboxTests {
    @Test("state and raised events commit together; nothing of a failed transaction is published")
    func atomic() async throws {
        let (database, dir) = try temporaryDatabase()
        defer { try? FileManager.default.removeItem(at: dir) }
        try await database.pool.write { db in try db.execute(sql: "CREATE TABLE t (x INTEGER)") }
        let context = HandlerContext(metadata: .newOperation(), appId: "test")
        struct Boom: Error {}
        await #expect(throws: Boom.self) {
            try await database.writeSQLite(context) { db in
                try db.execute(sql: "INSERT INTO t VALUES (1)")
                try context.raise(WindowAdded(window: 1))
                throw Boom()
            }
        }
        let (rows, depth) = try await database.pool.read { db in
            (try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM t")!, try Outbox.depth(in: db))
        }
        #expect(rows == 0 && depth == 0)
        let ok = HandlerContext(metadata: .newOperation(), appId: "test")
        try await database.writeSQLite(ok) { db in
            try db.execute(sql: "INSERT INTO t VALUES (1)")
            try ok.raise(WindowAdded(window: 2))
        }
        #expect(try await database.pool.read { db in try Outbox.depth(in: db) } == 1)
    }

    @Test("an event already in the inbox is not handled again")
    func inbox() async throws {
        let (database, dir) = try temporaryDatabase()
        defer { try? FileManager.default.removeItem(at: dir) }
        let event = try EventEnvelope(WindowAdded(window: 3))
        let runs = Atomic<Int>(0)
        for _ in 0..<3 {
            let context = HandlerContext(metadata: MessageMetadata(handling: event), appId: "t", handledEventId: event.eventId)
            _ = try await database.write(context) { _ in runs.add(1, ordering: .relaxed) }
        }
        #expect(runs.load(ordering: .relaxed) == 1)
    }

    @Test("while the broker is down the outbox keeps the events; the relay publishes them, in order, when it returns")
    func relayRetries() async throws {
        // One batch in flight at a time: the order holds across the failure.
        let run = try await outageThenRecovery(count: 50, chunk: 10, batchSize: 7, maxInFlight: 1)
        #expect(run.depthWhileDown == 50)
        #expect(run.published.map(\.eventId) == run.sent.map(\.eventId))
        #expect(run.published == run.sent)
        // Pipelined (the default): a batch confirmed after an earlier one failed has gone out
        // before that one goes again (OutboxRelay), so only "every event, at least once" holds
        // when the broker comes back while batches are in flight.
        let pipelined = try await outageThenRecovery(count: 50, chunk: 10, batchSize: 7)
        #expect(pipelined.depthWhileDown == 50)
        #expect(Set(pipelined.published.map(\.eventId)) == Set(pipelined.sent.map(\.eventId)))
    }
}

extension OutboxTests {
    @Test("more events than the relay's memory holds, stored while the broker is down, are published once each, in order")
    func overflowGoesThroughTheTable() async throws {
        let count = OutboxFeed.limit + 700
        let run = try await outageThenRecovery(count: count, chunk: 100, batchSize: 300, maxInFlight: 1)
        #expect(run.depthWhileDown == count)
        #expect(run.published.count == count)
        #expect(run.published.map(\.eventId) == run.sent.map(\.eventId))
    }

    /// Stores `count` events (`chunk` per write) while the publisher is down, lets the relay
    /// (batches of `batchSize`) fail twice, brings the publisher back and waits for the outbox
    /// to empty.
    func outageThenRecovery(count: Int, chunk: Int, batchSize: Int, maxInFlight: Int = 4) async throws
        -> (sent: [EventEnvelope], depthWhileDown: Int, published: [EventEnvelope]) {
        let (database, dir) = try temporaryDatabase()
        defer { try? FileManager.default.removeItem(at: dir) }
        let publisher = FlakyPublisher()
        let relay = OutboxRelay(database: database, publisher: publisher, batchSize: batchSize, maxInFlight: maxInFlight)
        let task = Task { try await relay.run() }
        defer { task.cancel() }
        let sent = try (0..<count).map { try EventEnvelope(WindowAdded(window: $0)) }
        for start in stride(from: 0, to: count, by: chunk) {
            try await database.store(Array(sent[start..<min(count, start + chunk)]))
        }
        let deadline = Date().addingTimeInterval(20)
        while publisher.failures.load(ordering: .relaxed) < 2, Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        let depthWhileDown = try await database.pool.read { db in try Outbox.depth(in: db) }
        publisher.down.store(false, ordering: .relaxed)
        try await waitUntilEmpty(database, before: deadline)
        return (sent, depthWhileDown, await publisher.transport.published)
    }

    func waitUntilEmpty(_ database: ServiceDatabase, before deadline: Date) async throws {
        while try await database.pool.read({ db in try Outbox.depth(in: db) }) > 0, Date() < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    @Test("rows another process stored and never published go out: unclaimed ones at once, claimed ones once the claim is stale")
    func rowsOfAnotherProcess() async throws {
        let (other, dir) = try temporaryDatabase()
        defer { try? FileManager.default.removeItem(at: dir) }
        let claimed = try (0..<5).map { try EventEnvelope(WindowAdded(window: $0)) }
        let unclaimed = try (5..<8).map { try EventEnvelope(WindowAdded(window: $0)) }
        try await other.store(claimed)  // claimed by `other`'s relay, which never runs
        // A claim that stays fresh for an hour, whatever the test's pace.
        try await other.pool.write { db in
            try db.execute(sql: "UPDATE outbox SET claimed_at = ?", arguments: [Date().timeIntervalSince1970 + 3600])
            try Outbox.append(unclaimed, in: db)
        }
        let database = try ServiceDatabase(path: dir.appendingPathComponent("t.sqlite").path)
        let transport = InMemoryTransport()
        let relay = OutboxRelay(database: database, publisher: transport)
        let task = Task { try await relay.run() }
        defer { task.cancel() }
        let deadline = Date().addingTimeInterval(15)
        while await transport.published.count < 3, Date() < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(await transport.published.map(\.eventId) == unclaimed.map(\.eventId))
        // Idle sweeps (every second) leave another relay's fresh claim alone…
        try await Task.sleep(for: .milliseconds(1500))
        #expect(await transport.published.count == 3)
        // …and take it once it is stale (that relay's process died).
        try await database.pool.write { db in try db.execute(sql: "UPDATE outbox SET claimed_at = 0") }
        try await waitUntilEmpty(database, before: deadline)
        #expect(await transport.published.map(\.eventId) == unclaimed.map(\.eventId) + claimed.map(\.eventId))
    }
}

@Suite("Failed operations")
struct OperationFailedTests {
    struct Boom: Error {}

    @Test("the last failed attempt stores <service>.events.operation_failed with the operation id; earlier ones do not")
    func lastAttempt() async throws {
        let (database, dir) = try temporaryDatabase()
        defer { try? FileManager.default.removeItem(at: dir) }
        var registry = HandlerRegistry()
        registry.on(WindowAdded.self) { _, _ in throw Boom() }
        let transport = InMemoryTransport()
        let bus = MessageBus(appId: "correlations", registry: registry)
        let policy = RetryPolicy(maxAttempts: 3, failureEvent: CorrelationsOperationFailed.self)
        let service = ConsumerService(consumer: await transport.consumer(queue: "x", bindings: []), bus: bus,
                                      policy: policy, database: database, logger: .init(label: "t"))
        let event = try EventEnvelope(WindowAdded(window: 4), correlationId: "op-7")
        func deliver(_ attempt: Int) async -> DeliveryOutcome {
            await service.handle(Delivery(envelope: event, routingKey: event.routingKey, body: Array(event.body),
                                          redelivered: false, attempt: attempt))
        }
        #expect(await deliver(1) == .retry(reason: "\(BusError(.handlersFailed, "\(Boom())"))"))
        #expect(await deliver(2) == .retry(reason: "\(BusError(.handlersFailed, "\(Boom())"))"))
        #expect(try await database.pool.read { db in try Outbox.depth(in: db) } == 0)
        guard case .deadLetter = await deliver(3) else { Issue.record("expected a dead letter on the last attempt"); return }
        let relay = Task { try await OutboxRelay(database: database, publisher: transport).run() }
        defer { relay.cancel() }
        try await TransportConformance.waitUntil("operation_failed published") { await !transport.published.isEmpty }
        let failed = try #require(await transport.published.first)
        #expect(failed.routingKey == "correlations.events.operation_failed")
        #expect(failed.correlationId == "op-7")
        #expect(failed.causationId == event.eventId.uuidString.lowercased())
        let payload = try failed.decode(CorrelationsOperationFailed.self).failure
        #expect(payload.operationId == "op-7" && payload.service == "correlations" && payload.reason.contains("Boom"))
    }
}

@Suite("Group commit")
struct GroupCommitTests {
    struct Noted: Event {
        static let routingKey = "test.events.noted"
        var n: Int
    }

    @Test("concurrent writes share transactions; one that throws is rolled back alone, with its events")
    func oneFailsTheOthersCommit() async throws {
        let (database, dir) = try temporaryDatabase()
        defer { try? FileManager.default.removeItem(at: dir) }
        try await database.pool.write { db in try db.execute(sql: "CREATE TABLE t (x INTEGER)") }
        struct Boom: Error {}
        let outcomes = await withTaskGroup(of: (Int, Bool).self) { group in
            for n in 0..<200 {
                group.addTask {
                    let context = HandlerContext(metadata: .newOperation(), appId: "test")
                    do {
                        try await database.writeSQLite(context) { db in
                            try db.execute(sql: "INSERT INTO t VALUES (?)", arguments: [n])
                            try context.raise(Noted(n: n))
                            if n % 7 == 3 { throw Boom() }
                        }
                        return (n, true)
                    } catch is Boom {
                        return (n, false)
                    } catch {
                        Issue.record("write \(n) failed with \(error), not its own Boom")
                        return (n, false)
                    }
                }
            }
            var outcomes: [Int: Bool] = [:]
            for await (n, ok) in group { outcomes[n] = ok }
            return outcomes
        }
        let expected = Set((0..<200).filter { $0 % 7 != 3 })
        #expect(Set(outcomes.filter(\.value).keys) == expected)
        #expect(Set(outcomes.filter { !$0.value }.keys) == Set((0..<200).filter { $0 % 7 == 3 }))
        let (stored, queued) = try await database.pool.read { db in
            (Set(try Int.fetchAll(db, sql: "SELECT x FROM t")),
             try Data.fetchAll(db, sql: "SELECT body FROM outbox").map { try JSONDecoder().decode(Noted.self, from: $0).n })
        }
        #expect(stored == expected)
        #expect(Set(queued) == expected && queued.count == expected.count)
    }
}

/// The rows of table `t` each committed transaction inserted (GRDB's transaction observer).
final class CommittedRows: TransactionObserver, @unchecked Sendable {
    private let lock = NSLock()
    private var current: [Int64] = []
    private var committed: [[Int64]] = []

    var transactions: [[Int64]] { lock.withLock { committed } }

    func observes(eventsOfKind eventKind: DatabaseEventKind) -> Bool {
        if case .insert(let table) = eventKind { return table == "t" }
        return false
    }

    func databaseDidChange(with event: DatabaseEvent) { lock.withLock { current.append(event.rowID) } }

    func databaseDidCommit(_ db: Database) {
        lock.withLock {
            if !current.isEmpty { committed.append(current) }
            current = []
        }
    }

    func databaseDidRollback(_ db: Database) { lock.withLock { current = [] } }
}

extension GroupCommitTests {
    @Test("an event handler's write (a worker's batch) gets a transaction of its own; commands still share theirs")
    func eventWritesAlone() async throws {
        let (database, dir) = try temporaryDatabase()
        defer { try? FileManager.default.removeItem(at: dir) }
        let observer = CommittedRows()
        try await database.pool.write { db in
            try db.execute(sql: "CREATE TABLE t (x INTEGER PRIMARY KEY)")
            db.add(transactionObserver: observer, extent: .observerLifetime)
        }
        // Rows 1...100 from commands, 1001...1100 from event handlers, all at once.
        await withTaskGroup(of: Void.self) { group in
            for n in 1...100 {
                for (row, event) in [(Int64(n), false), (Int64(1000 + n), true)] {
                    group.addTask {
                        let context = HandlerContext(metadata: .newOperation(), appId: "test",
                                                     handledEventId: event ? UUID() : nil)
                        do {
                            try await database.writeSQLite(context) { db in
                                try db.execute(sql: "INSERT INTO t VALUES (?)", arguments: [row])
                            }
                        } catch {
                            Issue.record("write \(row) failed: \(error)")
                        }
                    }
                }
            }
        }
        let transactions = observer.transactions
        let written: Set<Int64> = Set(transactions.flatMap { $0 })
        let expected: Set<Int64> = Set(Array(Int64(1)...100) + Array(Int64(1001)...1100))
        #expect(written == expected)
        for rows in transactions where rows.contains(where: { $0 > 1000 }) {
            #expect(rows.count == 1, "an event write shared a transaction: \(rows)")
        }
        #expect(transactions.contains { $0.count > 1 }, "no two commands shared a transaction: \(transactions.count) commits")
    }
}

@Suite("Releasing SQLite's memory")
struct ReleaseMemoryTests {
    @Test("releaseMemory empties the writer's page cache, and reads and writes go on")
    func release() async throws {
        let (database, dir) = try temporaryDatabase()
        defer { try? FileManager.default.removeItem(at: dir) }
        try await database.pool.write { db in
            try db.execute(sql: "CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            for i in 0..<200 {
                try db.execute(sql: "INSERT INTO t VALUES (?, ?)", arguments: [i, Data(repeating: 1, count: 4_000)])
            }
        }
        @Sendable func cacheUsed() async throws -> Int32 {
            try await database.pool.writeWithoutTransaction { db in
                var current: Int32 = 0
                var highest: Int32 = 0
                sqlite3_db_status(db.sqliteConnection, SQLITE_DBSTATUS_CACHE_USED, &current, &highest, 0)
                return current
            }
        }
        let before = try await cacheUsed()
        database.releaseMemory()
        // The writer's release is queued on the writer: this write runs after it.
        let after = try await cacheUsed()
        #expect(before > 500_000, "cache of \(before) bytes before")
        #expect(after < before / 4, "cache of \(after) bytes after, \(before) before")
        let context = HandlerContext(metadata: .newOperation(), appId: "test")
        try await database.writeSQLite(context) { db in try db.execute(sql: "INSERT INTO t VALUES (1000, x'00')") }
        #expect(try await database.pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM t") } == 201)
    }
}

@Suite("A store that is down")
struct StoreDownTests {
    @Test("a batch that failed because the store is down is held and handled again, no attempt spent, nothing dead-lettered")
    func held() async throws {
        let (database, dir) = try temporaryDatabase()
        defer { try? FileManager.default.removeItem(at: dir) }
        let failures = Counter()
        var registry = HandlerRegistry()
        // The store answers again at the third try.
        registry.on(WindowAdded.self) { _, _ in
            if failures.next() < 2 { throw StoreUnavailable(reason: "PostgreSQL restarting") }
        }
        let transport = InMemoryTransport()
        let bus = MessageBus(appId: "correlations", registry: registry)
        let service = ConsumerService(consumer: await transport.consumer(queue: "x", bindings: []), bus: bus,
                                      policy: RetryPolicy(maxAttempts: 1), database: database, logger: .init(label: "t"))
        let event = try EventEnvelope(WindowAdded(window: 4), correlationId: "op-7")
        // One attempt allowed: without the hold, the first failure would dead-letter it.
        let outcome = await service.handle(Delivery(envelope: event, routingKey: event.routingKey, body: Array(event.body),
                                                    redelivered: false, attempt: 1))
        #expect(outcome == .ack)
        #expect(failures.value == 3)
        // Any other failure still goes to the policy.
        #expect(ConsumerService.storeUnavailable(BusError(.handlersFailed, "x", cause: StoreUnavailable(reason: "y"))) != nil)
        #expect(ConsumerService.storeUnavailable(BusError(.handlersFailed, "x", cause: CancellationError())) == nil)
    }

    final class Counter: Sendable {
        private let count = Mutex(0)
        /// The count before this call.
        func next() -> Int {
            count.withLock { value in
                defer { value += 1 }
                return value
            }
        }
        var value: Int { count.withLock { $0 } }
    }
}
