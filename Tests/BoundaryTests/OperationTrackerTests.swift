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
