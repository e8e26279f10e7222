import MessageBus
import MessageBusTesting
import Testing

struct InMemoryFixture: TransportFixture {
    let transport = InMemoryTransport()
    var name: String { "in-memory" }
    func makePublisher() async throws -> any EventPublisher { transport }
    func makeConsumer(queue: String, bindings: [String], prefetch: UInt16) async throws -> any EventConsumer {
        await transport.consumer(queue: queue, bindings: bindings)
    }
    func dropConnections(of consumer: any EventConsumer) async throws -> Bool { false }
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
    @Test("reconnect (not applicable: no connections)") func reconnect() async throws {
        try await TransportConformance.reconnect(InMemoryFixture())
    }
}
