import EventCatalog
import Foundation
import GRDB
import Logging
import MessageBus
@testable import Correlations
import ServiceRuntime
import Testing

@Suite("correlations-worker's batches (real SQLite file)")
struct CorrelationsBatchTests {
    struct Outcome: Equatable {
        var events: [String]
        var pairs: [String]
    }

    func day(_ n: Int) -> CalendarDate { CalendarDate(daysSinceEpoch: CalendarDate("2024-01-01")!.daysSinceEpoch + n) }

    func run(_ events: [EventEnvelope], batched: Bool) async throws -> Outcome {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("corr-batch-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let database = try ServiceAssembly<CorrelationsService>.openDatabase(path: directory.appendingPathComponent("c.sqlite").path)
        let store = CorrelationsStore(database: database)
        let handlers = CorrelationsHandlers(store: store, logger: Logger(label: "test"))
        let items = try events.map { envelope in
            HandledEvent(event: try envelope.decode(ReturnsCalculated.self),
                         context: HandlerContext(metadata: MessageMetadata(handling: envelope), appId: "correlations",
                                                 handledEventId: envelope.eventId))
        }
        if batched {
            try await handlers.returnsCalculated(items)
        } else {
            for item in items { try await handlers.returnsCalculated([item]) }
        }
        var outcome = try await database.pool.read { db in
            Outcome(
                events: try String.fetchAll(db, sql: "SELECT CAST(body AS TEXT) FROM outbox ORDER BY seq"),
                pairs: try String.fetchAll(db, sql: "SELECT window || ' ' || idx || ' ' || hex(cells) || ' ' || coalesce(hex(shared), '-') FROM correlation_rows ORDER BY window, idx"))
        }
        for window in CorrelationsStore.defaultWindows {
            outcome.pairs.append("\(window): \(try await store.matrix(of: ["A", "B", "C", "D", "E"], window: window))")
        }
        return outcome
    }

    @Test("a batch stores every affected pair once and raises, per event, what handling them one after the other does")
    func batchEqualsOneByOne() async throws {
        var generator = SystemRandomNumberGenerator()
        func calculated(_ symbol: String, _ days: Range<Int>) throws -> EventEnvelope {
            try EventEnvelope(ReturnsCalculated(symbol: symbol, returns: days.map {
                DatedValue(date: day($0), value: Double.random(in: -0.05...0.05, using: &generator))
            }))
        }
        // Histories, then new days for some symbols (one twice, one with a corrected day), an
        // empty event, and a repeated event id.
        var events = try ["A", "B", "C", "D"].map { try calculated($0, 0..<70) }
        let repeated = try calculated("B", 70..<71)
        events += [repeated, try calculated("A", 70..<72), try calculated("E", 0..<0), try calculated("A", 71..<73),
                   try calculated("C", 65..<66), repeated, try calculated("E", 0..<25)]
        let batched = try await run(events, batched: true)
        let oneByOne = try await run(events, batched: false)
        #expect(batched == oneByOne)
        #expect(batched.events.count == events.count - 1)
        // 5 symbols, 3 default windows: 5 rows of each, and the 20-day matrix with a value in
        // every cell (each symbol has at least 20 returns).
        #expect(batched.pairs.count == 3 * 5 + 3)
        let matrix20 = try #require(batched.pairs.first { $0.hasPrefix("20: ") })
        let cells = matrix20.split(separator: "[")[1].split(separator: "]")[0].split(separator: ", ")
        #expect(cells.count == 25 && cells.allSatisfy { Double($0)?.isFinite == true }, "\(matrix20)")
        #expect(matrix20.contains("asOfDay: Optional("))
    }
}

@Suite("correlations store: the pairs of a file from before the rows move into them")
struct CorrelationRowsMigrationTests {
    @Test("pairs stored one per row (correlations-v1) read the same after correlations-v2-rows; new symbols come after")
    func migratesPairs() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("corr-v1-\(UUID().uuidString).sqlite").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            let queue = try DatabaseQueue(path: path)
            var migrator = DatabaseMigrator()
            CorrelationsStore.migrate(&migrator)
            try migrator.migrate(queue, upTo: "correlations-v1")
            try await queue.write { db in
                for symbol in ["MSFT", "AAPL", "IBM"] {
                    try db.execute(sql: "INSERT INTO symbols (symbol, version) VALUES (?, 1)", arguments: [symbol])
                }
                try db.execute(sql: """
                    INSERT INTO correlations (window, a, b, value, observations, as_of) VALUES
                        (20, 'AAPL', 'MSFT', 0.25, 20, 19000), (20, 'AAPL', 'IBM', NULL, 12, 19001),
                        (20, 'IBM', 'MSFT', -0.5, 20, 19002), (60, 'AAPL', 'MSFT', 0.75, 60, 19003)
                    """)
            }
        }
        let database = try ServiceDatabase(path: path, migrations: CorrelationsStore.migrate)
        let store = CorrelationsStore(database: database)
        #expect(try await store.pair("MSFT", "AAPL", window: 20) == PairCorrelation(value: 0.25, observations: 20, asOfDay: 19000))
        #expect(try await store.pair("AAPL", "IBM", window: 20) == PairCorrelation(value: nil, observations: 12, asOfDay: 19001))
        #expect(try await store.pair("IBM", "MSFT", window: 20) == PairCorrelation(value: -0.5, observations: 20, asOfDay: 19002))
        #expect(try await store.pair("AAPL", "MSFT", window: 60) == PairCorrelation(value: 0.75, observations: 60, asOfDay: 19003))
        #expect(try await store.pair("AAPL", "IBM", window: 60) == PairCorrelation(value: nil, observations: 0, asOfDay: nil))
        let matrix = try await store.matrix(of: ["IBM", "MSFT", "AAPL"], window: 20)
        #expect(matrix.values.map { $0.isNaN ? nil : $0 } == [nil, -0.5, nil, -0.5, nil, 0.25, nil, 0.25, nil])
        #expect(matrix.asOfDay == 19002)
        // A new symbol gets the next index.
        let handlers = CorrelationsHandlers(store: store, logger: Logger(label: "test"))
        try await handlers.returnsCalculated(ReturnsCalculated(symbol: "ZZ", returns: []),
                                             context: HandlerContext(metadata: .newOperation(), appId: "correlations", handledEventId: UUID()))
        let indices = try await database.pool.read { db in try String.fetchAll(db, sql: "SELECT symbol || idx FROM symbols ORDER BY idx") }
        #expect(indices == ["AAPL0", "IBM1", "MSFT2", "ZZ3"])
    }
}
