import EventCatalog
import MessageBus
import MessageBusTesting
import Testing

struct InMemoryFixture: TransportFixture {
    let transport = InMemoryTransport()
    var name: String { "in-memory" }
    func makePublisher() async throws -> any EventPublisher { transport }
    func makeConsumer(queue: String, bindings: [String], prefetch: UInt16,
                      policy: RetryPolicy) async throws -> any EventConsumer {
        await transport.consumer(queue: queue, bindings: bindings, policy: policy)
    }
    func takeDeadLetters(of queue: String) async throws -> [EventEnvelope] {
        await transport.takeDeadLetters(from: queue).compactMap(\.envelope)
    }
}

@Suite("In-memory transport conformance")
struct InMemoryConformanceTests {
    @Test func publishConsume() async throws { try await TransportConformance.publishConsume(InMemoryFixture()) }
    @Test func retryRedelivers() async throws { try await TransportConformance.retryRedelivers(InMemoryFixture()) }
    @Test func orderWithPrefetchOne() async throws {
        try await TransportConformance.orderWithPrefetchOne(InMemoryFixture())
    }
    @Test func noLossWhileClosing() async throws {
        try await TransportConformance.noLossWhileClosing(InMemoryFixture())
    }
    @Test func deadLetterAfterAttempts() async throws {
        try await TransportConformance.deadLetterAfterAttempts(InMemoryFixture())
    }
    // No reconnect scenario: the in-memory transport has no connections to drop
    // (`InMemoryFixture` is not a `ConnectionDroppingFixture`).
}
