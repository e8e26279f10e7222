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
        let handlers = CorrelationsHandlers(store: CorrelationsStore(database: database), logger: Logger(label: "test"))
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
        return try await database.pool.read { db in
            Outcome(
                events: try String.fetchAll(db, sql: "SELECT CAST(body AS TEXT) FROM outbox ORDER BY seq"),
                pairs: try String.fetchAll(db, sql: """
                    SELECT window || ' ' || a || ' ' || b || ' ' || coalesce(value, 'null') || ' ' || observations || ' ' || coalesce(as_of, '')
                    FROM correlations ORDER BY window, a, b
                    """))
        }
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
        // 5 symbols, 3 default windows: every pair stored, some with a value.
        #expect(batched.pairs.count == 3 * 10)
        #expect(batched.pairs.contains { !$0.contains("null") })
    }
}
