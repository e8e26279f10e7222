import Correlations
import EventCatalog
import Foundation
import Logging
import MessageBus
import PostgresNIO
import Returns
@testable import ServiceRuntime
import Synchronization
import Testing

/// What every store engine must do the same way (SQLite, PostgreSQL): the contract the
/// services rely on, run against each engine with several "processes" (stores opened apart)
/// on one store.
@Suite("Store conformance (SQLite, and PostgreSQL when there is one)")
struct StoreConformanceTests {
    @Test("migrations: eight processes starting at once on an empty store all open it, each migration applied once",
          arguments: Engine.available)
    func concurrentMigrations(engine: Engine) async throws {
        let place = engine.place()
        let opened = Counter()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    let database = try place.open("correlations", migrations: CorrelationsService.storeMigrations)
                    opened.add()
                    database.close()
                }
            }
            try await group.waitForAll()
        }
        #expect(opened.value == 8)
        let database = try place.open("correlations", migrations: CorrelationsService.storeMigrations)
        let (applied, windows) = try await database.read { connection -> ([String], [Int]) in
            switch connection {
            case .sqlite(let db):
                return (try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations ORDER BY identifier"),
                        try Int.fetchAll(db, sql: "SELECT window FROM windows ORDER BY window"))
            case .postgres(let session):
                return (try session.query("SELECT id FROM migrations ORDER BY id").map { try $0.column(0) },
                        try session.query("SELECT \"window\" FROM windows ORDER BY \"window\"").map { Int(try $0.column(0, as: Int32.self)) })
            }
        }
        #expect(Set(applied).count == applied.count)
        #expect(applied.contains("outbox-inbox"))
        #expect(applied.contains { $0.hasPrefix("correlations-") })
        // The default windows went in once, whoever migrated.
        #expect(windows == CorrelationsStore.defaultWindows)
        database.close()
        await place.remove()
    }

    @Test("outbox: two relays sweeping one store at once publish each of 1,000 rows exactly once and delete them",
          arguments: Engine.available)
    func twoRelays(engine: Engine) async throws {
        let place = engine.place()
        // A process wrote the rows and died before publishing: its claims go stale.
        let writer = try place.open("svc")
        let envelopes = try (0..<1_000).map { i in
            try EventEnvelope(WindowAdded(window: i + 1), appId: "svc", correlationId: "op-\(i)")
        }
        for chunk in stride(from: 0, to: envelopes.count, by: 100) {
            try await writer.store(Array(envelopes[chunk..<chunk + 100]))
        }
        #expect(try await writer.outboxDepth() == 1_000)
        writer.close()
        // The relays take the dead writer's rows once its claims are older than `staleAfter`.
        // The same age makes a live relay's claims stale too: a batch it claimed and has not
        // deleted within `staleAfter` is taken again by the other relay (at least once, by
        // design). 3 s is far above a batch's publish on a loaded machine; with 0.2 s a slow
        // CI run saw one batch of 50 published twice.
        let staleAfter = 3.0
        try await Task.sleep(for: .seconds(staleAfter + 0.1))

        let publishers = [RecordingPublisher(), RecordingPublisher()]
        var tasks: [Task<Void, any Error>] = []
        var databases: [ServiceDatabase] = []
        for publisher in publishers {
            let database = try place.open("svc")
            databases.append(database)
            let relay = OutboxRelay(database: database, publisher: publisher, batchSize: 50, staleAfter: staleAfter)
            tasks.append(Task { try await relay.run() })
        }
        defer { tasks.forEach { $0.cancel() } }
        try await waitUntil("every row published and deleted", seconds: 30) {
            guard publishers.reduce(0, { $0 + $1.count }) >= 1_000 else { return false }
            return try await databases[0].outboxDepth() == 0
        }
        let ids = publishers.flatMap(\.ids)
        #expect(ids.count == 1_000, "published \(ids.count) times for 1,000 rows")
        #expect(Set(ids) == Set(envelopes.map(\.eventId)))
        databases.forEach { $0.close() }
        await place.remove()
    }

    @Test("inbox: one event written by two processes, ten times each at once, is handled once",
          arguments: Engine.available)
    func inboxDedup(engine: Engine) async throws {
        let place = engine.place()
        let databases = [try place.open("svc"), try place.open("svc")]
        let event = try EventEnvelope(WindowAdded(window: 7), appId: "svc", correlationId: "op")
        let runs = Counter()
        let handled = try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<20 {
                group.addTask {
                    let context = HandlerContext(metadata: MessageMetadata(handling: event), appId: "svc", handledEventId: event.eventId)
                    return try await databases[i % 2].write(context) { _ in
                        runs.add()
                        try context.raise(WindowAdded(window: 8))
                    }
                }
            }
            return try await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(handled.filter { $0 }.count == 1)
        // A body that ran in a transaction that rolled back would count here: none did.
        #expect(runs.value == 1)
        // Its one raised event is in the outbox once.
        #expect(try await databases[0].outboxDepth() == 1)
        databases.forEach { $0.close() }
        await place.remove()
    }

    @Test("a write whose body throws stores nothing: no state, no outbox row, no inbox row", arguments: Engine.available)
    func rollback(engine: Engine) async throws {
        let place = engine.place()
        let database = try place.open("returns", migrations: ReturnsService.storeMigrations)
        let store = ReturnsStore(database: database)
        let event = try EventEnvelope(WindowAdded(window: 1), appId: "returns")
        struct Refused: Error {}
        await #expect(throws: Refused.self) {
            try await store.write(HandlerContext(metadata: MessageMetadata(handling: event), appId: "returns", handledEventId: event.eventId)) { tx in
                try tx.savePrices([PricePoint(date: CalendarDate("2024-01-02")!, close: 1)], of: "AAA")
                throw Refused()
            }
        }
        #expect(try await store.symbols() == [])
        #expect(try await database.outboxDepth() == 0)
        // Not recorded as handled: the event runs when it comes again.
        let ran = try await store.write(HandlerContext(metadata: MessageMetadata(handling: event), appId: "returns", handledEventId: event.eventId)) { _ in }
        #expect(ran)
        database.close()
        await place.remove()
    }
}

extension StoreConformanceTests {
    /// 200 commands, as an api's requests: 100 at once that only write rows (on PostgreSQL a
    /// group of those is one statement), then 100 at once of which every seventh reads first
    /// (a group with one is a transaction of several statements).
    private func sharedCommands(_ store: ReturnsStore, refusing: Set<Int>,
                                symbol: @escaping @Sendable (Int) -> String) async throws -> [Int: Bool] {
        struct Refused: Error {}
        var outcome: [Int: Bool] = [:]
        for wave in [0..<100, 100..<200] {
            let results = try await withThrowingTaskGroup(of: (Int, Bool).self) { group in
                for i in wave {
                    group.addTask {
                        let context = HandlerContext(metadata: .newOperation(), appId: "returns")
                        do {
                            try await store.write(context) { tx in
                                if i >= 100 && i % 7 == 0 {
                                    _ = try tx.pricesAndReturns(of: symbol(i), from: CalendarDate("2024-01-01")!)
                                }
                                try tx.savePrices([PricePoint(date: CalendarDate("2024-01-02")!, close: Double(i))], of: symbol(i))
                                try context.raise(WindowAdded(window: i + 1))
                                if refusing.contains(i) { throw Refused() }
                            }
                            return (i, true)
                        } catch {
                            return (i, false)
                        }
                    }
                }
                return try await group.reduce(into: [Int: Bool]()) { $0[$1.0] = $1.1 }
            }
            outcome.merge(results) { $1 }
        }
        return outcome
    }

    @Test("commands at once share transactions: each stored once with its outbox row; one whose body throws stores nothing, alone",
          arguments: Engine.available)
    func concurrentCommands(engine: Engine) async throws {
        let place = engine.place()
        let database = try place.open("returns", migrations: ReturnsService.storeMigrations)
        let store = ReturnsStore(database: database)
        let outcome = try await sharedCommands(store, refusing: [13, 77, 140]) { "S\($0)" }
        #expect(outcome.filter { !$0.value }.keys.sorted() == [13, 77, 140])
        let expected = (0..<200).filter { ![13, 77, 140].contains($0) }
        #expect(try await store.symbols() == expected.map { "S\($0)" }.sorted())
        for i in [0, 1, 14, 199] {
            #expect(try await store.prices(of: "S\(i)", from: nil, to: nil)?.map(\.close) == [Double(i)])
        }
        #expect(try await database.outboxDepth() == expected.count)
        database.close()
        await place.remove()
    }

    @Test("PostgreSQL: a row the server refuses fails its write alone, in a group of one statement or of several",
          .enabled(if: Engine.databaseURL != nil, Engine.skipReason))
    func serverRefusesOneRow() async throws {
        let place = Engine.postgres.place()
        let database = try place.open("returns", migrations: ReturnsService.storeMigrations)
        let store = ReturnsStore(database: database)
        // A NUL byte is not valid in PostgreSQL text: the whole statement fails at the server.
        let refused: Set<Int> = [5, 21, 150]
        let outcome = try await sharedCommands(store, refusing: []) { refused.contains($0) ? "BAD\u{0}\($0)" : "S\($0)" }
        #expect(outcome.filter { !$0.value }.keys.sorted() == refused.sorted())
        let expected = (0..<200).filter { !refused.contains($0) }
        #expect(try await store.symbols() == expected.map { "S\($0)" }.sorted())
        #expect(try await database.outboxDepth() == expected.count)
        database.close()
        await place.remove()
    }
}

/// Records what a relay published.
final class RecordingPublisher: EventPublisher {
    private let published = Mutex<[UUID]>([])

    func publish(_ envelopes: [EventEnvelope]) async throws {
        published.withLock { $0.append(contentsOf: envelopes.map(\.eventId)) }
    }

    var ids: [UUID] { published.withLock { $0 } }
    var count: Int { published.withLock { $0.count } }
}

/// A count shared by concurrent tasks.
final class Counter: Sendable {
    private let count = Atomic<Int>(0)
    func add() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}
