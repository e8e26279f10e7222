import EventCatalog
import Foundation
import GRDB
import Logging
import MessageBus
@testable import Returns
import ServiceRuntime
import Testing

@Suite("returns-worker's batches (real SQLite file)")
struct ReturnsBatchTests {
    /// What a run leaves: the outbox's `returns_calculated` bodies in order, and the returns table.
    struct Outcome: Equatable {
        var events: [String]
        var returns: [String]
    }

    func day(_ n: Int) -> CalendarDate { CalendarDate(daysSinceEpoch: CalendarDate("2024-01-01")!.daysSinceEpoch + n) }

    /// Prices stored as the api would have (two symbols, a few days, one close updated),
    /// then `events` handled by the worker's handler, as one batch or one by one.
    func run(_ events: [EventEnvelope], batched: Bool) async throws -> Outcome {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("returns-batch-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let database = try ServiceAssembly<ReturnsService>.openDatabase(path: directory.appendingPathComponent("r.sqlite").path)
        let store = ReturnsStore(database: database)
        let handlers = ReturnsHandlers(store: store, logger: Logger(label: "test"))
        try await store.write(HandlerContext(metadata: .newOperation(), appId: "returns")) { [self] tx in
            try tx.savePrices((0..<6).map { PricePoint(date: day($0), close: 100 + Double($0 * $0)) }, of: "A")
            try tx.savePrices((0..<4).map { PricePoint(date: day($0), close: 50 - Double($0)) }, of: "B")
        }
        let items = try events.map { envelope in
            HandledEvent(event: try envelope.decode(PricesRecorded.self),
                         context: HandlerContext(metadata: MessageMetadata(handling: envelope), appId: "returns",
                                                 handledEventId: envelope.eventId))
        }
        if batched {
            try await handlers.pricesRecorded(items)
        } else {
            for item in items { try await handlers.pricesRecorded([item]) }
        }
        return try await database.pool.read { db in
            Outcome(
                events: try String.fetchAll(db, sql: "SELECT CAST(body AS TEXT) FROM outbox WHERE routing_key = ? ORDER BY seq",
                                            arguments: [ReturnsCalculated.routingKey]),
                returns: try String.fetchAll(db, sql: "SELECT symbol || ' ' || date || ' ' || simple || ' ' || log FROM returns ORDER BY symbol, date"))
        }
    }

    @Test("a batch stores and raises what handling its events one after the other does: each symbol once, each event the changes from its first date no earlier event carried, a repeated event id once")
    func batchEqualsOneByOne() async throws {
        func recorded(_ symbol: String, _ first: Int, _ last: Int) throws -> EventEnvelope {
            try EventEnvelope(PricesRecorded(symbol: symbol, firstDate: day(first), lastDate: day(last), count: last - first + 1))
        }
        let repeated = try recorded("A", 0, 0)
        let events = [try recorded("A", 3, 5), try recorded("B", 0, 3), repeated, try recorded("B", 2, 2),
                      try recorded("A", 1, 1), repeated, try recorded("C", 0, 0)]
        let batched = try await run(events, batched: true)
        let oneByOne = try await run(events, batched: false)
        #expect(batched == oneByOne)
        // Every event once (the repeated id's second delivery raises nothing), and every return once.
        #expect(batched.events.count == events.count - 1)
        #expect(batched.returns.count == 5 + 3)
        #expect(batched.events[0].contains("\"symbol\":\"A\"") && batched.events[2].contains("\"returns\":[{"))
    }
}
