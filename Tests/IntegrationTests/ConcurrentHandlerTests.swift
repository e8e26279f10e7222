@testable import AMQPTransport
import EventCatalog
import Foundation
import MessageBus
import MessageBusTesting
import Synchronization
import Testing

@Suite("Handlers run concurrently (real RabbitMQ)", .enabled(if: Broker.available, Broker.skipReason))
struct ConcurrentHandlerTests {
    @Test("with concurrency 8, up to 8 handlers run at once; every delivery is settled once, a dead letter among them included")
    func concurrentSettledOnce() async throws {
        let settings = try Broker.settings()
        let service = "conc\(UUID().uuidString.prefix(6).lowercased())"
        let spec = AMQPConsumer.QueueSpec(service: service, mode: .durable, prefetch: 20,
                                          policy: .noRetries(), concurrency: 8)
        // The queue is declared and bound by a first consumer, which stops before anything is
        // published: the events are then queued, and the broker pushes a prefetch's worth at
        // once, so the consumer receives several at a time (what it may handle together).
        let declaring = AMQPConsumer(settings: settings, queue: spec, bindings: [WindowAdded.routingKey])
        let first = Task { try await declaring.run { _ in .ack } }
        try await TransportConformance.waitUntil("declared") { declaring.isReady }
        first.cancel()
        _ = try? await first.value
        let envelopes = try (0..<60).map { try EventEnvelope(WindowAdded(window: $0)) }
        try await AMQPPublisher(settings: settings).publish(envelopes)

        let consumer = AMQPConsumer(settings: settings, queue: spec, bindings: [WindowAdded.routingKey])
        let running = Atomic<Int>(0)
        let most = Atomic<Int>(0)
        let seen = Received()
        let task = Task {
            try await consumer.run { delivery in
                let now = running.add(1, ordering: .relaxed).newValue
                _ = most.max(now, ordering: .relaxed)
                try? await Task.sleep(for: .milliseconds(20))
                running.subtract(1, ordering: .relaxed)
                await seen.add(delivery)
                let window = (try? delivery.envelope?.decode(WindowAdded.self))?.window
                return window == 13 ? .deadLetter(reason: "thirteen") : .ack
            }
        }
        defer { task.cancel() }
        try await TransportConformance.waitUntil("60 handled") { await seen.count >= 60 }
        try await TransportConformance.waitUntil("dead-lettered") { consumer.deadLetteredCount == 1 }
        // Nothing comes back: every delivery was settled (a missing ack would be redelivered
        // only on reconnect, so also check the broker holds no unacked message for the queue).
        try await Task.sleep(for: .milliseconds(300))
        let ids = await seen.items.compactMap { $0.envelope?.eventId }
        #expect(ids.count == 60 && Set(ids) == Set(envelopes.map(\.eventId)))
        #expect((2...8).contains(most.load(ordering: .relaxed)), "at most \(most.load(ordering: .relaxed)) ran at once")
        task.cancel()
        _ = try? await task.value
        #expect(try drain("\(service).events", settings: settings).isEmpty, "a delivery was left unacked")
        let dead = try drain("\(service).events.dead", settings: settings)
        let window = try dead.first?.envelope.get().decode(WindowAdded.self).window
        #expect(dead.count == 1 && window == 13)
    }
}
