import EventCatalog
import Foundation
import MessageBus
import Synchronization
import Testing

/// Payloads that decode but must never reach a handler (DESIGN.md, "Limits on untrusted
/// input"): each is refused by the bus as `undecodable`, which consumers dead-letter at once.
@Suite("Consumed payloads are validated before any handler")
struct EventValidationTests {
    static let hostile: [(String, String)] = [
        (WindowAdded.routingKey, #"{"window":9223372036854775807}"#),
        (WindowAdded.routingKey, #"{"window":-9223372036854775808}"#),
        (WindowAdded.routingKey, #"{"window":1}"#),
        (WindowAdded.routingKey, #"{"window":2521}"#),
        (WindowAdded.routingKey, #"{"window":1e999}"#),
        (PricesRecorded.routingKey, #"{"symbol":"aapl","first_date":"2024-01-02","last_date":"2024-01-02","count":1}"#),
        (PricesRecorded.routingKey, #"{"symbol":"AAPL","first_date":"2024-01-03","last_date":"2024-01-02","count":1}"#),
        (PricesRecorded.routingKey, #"{"symbol":"AAPL","first_date":"2024-01-02","last_date":"2024-01-02","count":9223372036854775807}"#),
        (PricesRecorded.routingKey, #"{"symbol":"AAPL","first_date":"2024-02-30","last_date":"2024-03-01","count":1}"#),
        (ReturnsCalculated.routingKey, #"{"symbol":"AAPL","returns":[{"date":"2024-01-02","value":1e999}]}"#),
        (ReturnsCalculated.routingKey, #"{"symbol":"AAPL","returns":[{"date":"2024-01-02","value":-1.5}]}"#),
        (ReturnsCalculated.routingKey, #"{"symbol":"AAPL","returns":[{"date":"2024-01-03","value":0.1},{"date":"2024-01-02","value":0.1}]}"#),
        (ReturnsCalculated.routingKey, #"{"symbol":"","returns":[]}"#),
        (CorrelationsUpdated.routingKey, #"{"symbols":["A"],"windows":[0],"as_of":null,"pairs":0}"#),
        (CorrelationsUpdated.routingKey, #"{"symbols":["A"],"windows":[20],"as_of":null,"pairs":-1}"#),
    ]

    @Test("each hostile payload is undecodable and no handler runs", arguments: hostile)
    func refused(routingKey: String, body: String) async throws {
        let ran = Atomic<Int>(0)
        var registry = HandlerRegistry()
        registry.on(WindowAdded.self) { _, _ in ran.add(1, ordering: .relaxed) }
        registry.on(PricesRecorded.self) { _, _ in ran.add(1, ordering: .relaxed) }
        registry.on(ReturnsCalculated.self) { _, _ in ran.add(1, ordering: .relaxed) }
        registry.on(CorrelationsUpdated.self) { _, _ in ran.add(1, ordering: .relaxed) }
        let bus = MessageBus(appId: "test", registry: registry)
        let envelope = EventEnvelope(routingKey: routingKey, appId: "x", body: Data(body.utf8))
        do {
            try await bus.dispatch(envelope)
            Issue.record("accepted \(body)")
        } catch let error as BusError {
            #expect(error.code == .undecodable, "\(error)")
        }
        #expect(ran.load(ordering: .relaxed) == 0)
    }

    @Test("the same events within the rules are handled")
    func accepted() async throws {
        let ran = Atomic<Int>(0)
        var registry = HandlerRegistry()
        registry.on(WindowAdded.self) { _, _ in ran.add(1, ordering: .relaxed) }
        registry.on(ReturnsCalculated.self) { _, _ in ran.add(1, ordering: .relaxed) }
        let bus = MessageBus(appId: "test", registry: registry)
        for (key, body) in [(WindowAdded.routingKey, #"{"window":2520}"#),
                            (ReturnsCalculated.routingKey, #"{"symbol":"BRK.B","returns":[{"date":"2024-01-02","value":-1}]}"#)] {
            try await bus.dispatch(EventEnvelope(routingKey: key, appId: "x", body: Data(body.utf8)))
        }
        #expect(ran.load(ordering: .relaxed) == 2)
    }
}
