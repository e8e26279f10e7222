import Boundary
import EventCatalog
import Foundation
import HTTPServer
import Testing

func envelope<E: Event>(_ event: E, _ op: String) throws -> EventEnvelope {
    try EventEnvelope(event, correlationId: op)
}

let d = CalendarDate("2024-01-02")!

@Suite("Operation tracking")
struct OperationTrackerTests {
    @Test("a write of two symbols succeeds after two correlations_updated, not one")
    func succeeds() throws {
        let tracker = OperationTracker(timeout: 30)
        let op = UUID().uuidString.lowercased()
        for s in ["A", "B"] {
            tracker.record(try envelope(PricesRecorded(symbol: s, firstDate: d, lastDate: d, count: 1), op))
        }
        tracker.record(try envelope(ReturnsCalculated(symbol: "A", returns: []), op))
        tracker.record(try envelope(CorrelationsUpdated(symbols: ["A"], windows: [], asOf: nil, pairs: 0), op))
        #expect(tracker.operation(op)?.status == .pending)
        tracker.record(try envelope(CorrelationsUpdated(symbols: ["B"], windows: [], asOf: nil, pairs: 0), op))
        let operation = try #require(tracker.operation(op.uppercased()))
        #expect(operation.status == .succeeded)
        #expect(operation.events.map(\.routingKey) == [
            PricesRecorded.routingKey, PricesRecorded.routingKey, ReturnsCalculated.routingKey,
            CorrelationsUpdated.routingKey, CorrelationsUpdated.routingKey,
        ])
        #expect(operation.events[0].payload["symbol"] == .string("A"))
        #expect(operation.events[0].timestamp.hasSuffix("Z"))
    }

    @Test("operation_failed fails it; silence past the deadline times it out; unknown ids are nil")
    func failedAndTimedOut() throws {
        let tracker = OperationTracker(timeout: 5)
        let failed = UUID().uuidString.lowercased(), silent = UUID().uuidString.lowercased()
        tracker.record(try envelope(WindowAdded(window: 5), failed))
        tracker.record(try envelope(CorrelationsOperationFailed(OperationFailure(operationId: failed, service: "correlations",
                                                                                  reason: "boom")), failed))
        #expect(tracker.operation(failed)?.status == .failed)
        let start = Date()
        tracker.record(try envelope(WindowAdded(window: 5), silent), now: start)
        #expect(tracker.operation(silent, now: start.addingTimeInterval(4))?.status == .pending)
        #expect(tracker.operation(silent, now: start.addingTimeInterval(6))?.status == .timedOut)
        #expect(tracker.operation(UUID().uuidString) == nil)
    }

    @Test("recent outcomes are bounded in count and age")
    func bounded() throws {
        let tracker = OperationTracker(timeout: 30, capacity: 3, maxAge: 60)
        let ids = (0..<5).map { _ in UUID().uuidString.lowercased() }
        let start = Date()
        for id in ids { tracker.record(try envelope(WindowAdded(window: 2), id), now: start) }
        #expect(tracker.operation(ids[0], now: start) == nil)
        #expect(tracker.operation(ids[4], now: start) != nil)
        #expect(tracker.operation(ids[4], now: start.addingTimeInterval(61)) == nil)
    }

    @Test("GET /operations/{id}: 400 for a non-UUID, 404 never seen, 200 with the shape of DESIGN.md")
    func route() async throws {
        let tracker = OperationTracker()
        var router = Router()
        BoundaryRoutes(tracker: tracker).add(to: &router)
        #expect(await router.respond(to: HTTPRequest(method: "GET", path: "/operations/nope")).status == 400)
        #expect(await router.respond(to: HTTPRequest(method: "GET", path: "/operations/\(UUID())")).status == 404)
        let op = UUID().uuidString.lowercased()
        tracker.record(try envelope(WindowAdded(window: 9), op))
        let r = await router.respond(to: HTTPRequest(method: "GET", path: "/operations/\(op)"))
        let body = try JSONSerialization.jsonObject(with: Data(r.body)) as! [String: Any]
        #expect(body["operation_id"] as? String == op)
        #expect(body["status"] as? String == "pending")
        let event = (body["events"] as! [[String: Any]])[0]
        #expect(Set(event.keys) == ["routing_key", "event_id", "correlation_id", "payload", "timestamp"])
        #expect((event["payload"] as? [String: Any])?["window"] as? Int == 9)
    }
}

@Suite("Operation tracking under hostile input")
struct OperationTrackerLimitTests {
    @Test("a redelivered event counts once: two prices_recorded need two correlations_updated, not one sent twice")
    func redeliveryCountsOnce() throws {
        let tracker = OperationTracker(timeout: 30)
        let op = UUID().uuidString.lowercased()
        for s in ["A", "B"] {
            #expect(tracker.record(try envelope(PricesRecorded(symbol: s, firstDate: d, lastDate: d, count: 1), op)))
        }
        let update = try envelope(CorrelationsUpdated(symbols: ["A"], windows: [], asOf: nil, pairs: 0), op)
        #expect(tracker.record(update))
        #expect(!tracker.record(update), "the redelivery was taken as new")
        #expect(tracker.operation(op)?.status == .pending)
        #expect(tracker.operation(op)?.events.count == 3)
    }

    @Test("kept events are bounded in bytes, oldest operations first; one operation keeps at most a quarter")
    func boundedInBytes() throws {
        let tracker = OperationTracker(timeout: 30, maxBytes: 1 << 20)
        let failure = String(repeating: "x", count: 20_000)
        var ids: [String] = []
        for _ in 0..<200 {
            let op = UUID().uuidString.lowercased()
            ids.append(op)
            tracker.record(try envelope(CorrelationsOperationFailed(OperationFailure(operationId: op, service: "c", reason: failure)), op))
        }
        #expect(tracker.bytesKept <= 1 << 20)
        #expect(tracker.operation(ids[0]) == nil, "the oldest was kept")
        #expect(tracker.operation(ids[199]) != nil, "the newest was dropped")
        // One operation with many large events keeps only a quarter of the budget's worth.
        let big = UUID().uuidString.lowercased()
        for _ in 0..<100 {
            tracker.record(try envelope(CorrelationsOperationFailed(OperationFailure(operationId: big, service: "c", reason: failure)), big))
        }
        let kept = try #require(tracker.operation(big))
        #expect(kept.events.count < 20 && kept.events.count > 5)
        #expect(tracker.bytesKept <= 1 << 20)
    }

    @Test("an AMQP timestamp far out of range shows as a clamped date, never a trap")
    func hugeTimestamp() throws {
        let tracker = OperationTracker()
        let op = UUID().uuidString.lowercased()
        for seconds in [1.8e19, -1e19, Double.greatestFiniteMagnitude] {
            var e = try envelope(WindowAdded(window: 3), op)
            e.timestamp = Date(timeIntervalSince1970: seconds)
            e.eventId = UUID()
            tracker.record(e)
        }
        let stamps = try #require(tracker.operation(op)).events.map(\.timestamp)
        #expect(stamps == ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
    }
}
