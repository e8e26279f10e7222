@testable import AMQPTransport
import EventCatalog
import Foundation
import MessageBus
import MessageBusTesting
import Synchronization
import Testing

@Suite("Deliveries handled in batches (real RabbitMQ)", .enabled(if: Broker.available, Broker.skipReason))
struct BatchedConsumerTests {
    @Test("with batch size 8, a queued backlog comes in batches of up to 8; every delivery is settled once, a dead letter in the middle of a batch included")
    func batchesSettledOnce() async throws {
        let settings = try Broker.settings()
        let service = "conc\(UUID().uuidString.prefix(6).lowercased())"
        let spec = AMQPConsumer.QueueSpec(service: service, mode: .durable, prefetch: 20,
                                          policy: .noRetries(), batchSize: 8)
        // The queue is declared and bound by a first consumer, which stops before anything is
        // published: the events are then queued, and the broker pushes a prefetch's worth at
        // once, so the consumer receives several at a time (what it hands over together).
        let declaring = AMQPConsumer(settings: settings, queue: spec, bindings: [WindowAdded.routingKey])
        let first = Task { try await declaring.run(handler: { _ in .ack }) }
        try await TransportConformance.waitUntil("declared") { declaring.isReady }
        first.cancel()
        _ = try? await first.value
        let envelopes = try (0..<60).map { try EventEnvelope(WindowAdded(window: $0)) }
        try await AMQPPublisher(settings: settings).publish(envelopes)

        let consumer = AMQPConsumer(settings: settings, queue: spec, bindings: [WindowAdded.routingKey])
        let batches = Mutex<[Int]>([])
        let seen = Received()
        let task = Task {
            try await consumer.run(batchHandler: { deliveries in
                batches.withLock { $0.append(deliveries.count) }
                // Slow enough that the next deliveries arrive meanwhile and make a batch.
                try? await Task.sleep(for: .milliseconds(20))
                var outcomes: [DeliveryOutcome] = []
                for delivery in deliveries {
                    await seen.add(delivery)
                    let window = (try? delivery.envelope?.decode(WindowAdded.self))?.window
                    outcomes.append(window == 13 ? .deadLetter(reason: "thirteen") : .ack)
                }
                return outcomes
            })
        }
        defer { task.cancel() }
        try await TransportConformance.waitUntil("60 handled") { await seen.count >= 60 }
        try await TransportConformance.waitUntil("dead-lettered") { consumer.deadLetteredCount == 1 }
        // Nothing comes back: every delivery was settled (a missing ack would be redelivered
        // only on reconnect, so also check the broker holds no unacked message for the queue).
        try await Task.sleep(for: .milliseconds(300))
        let ids = await seen.items.compactMap { $0.envelope?.eventId }
        #expect(ids.count == 60 && Set(ids) == Set(envelopes.map(\.eventId)))
        let sizes = batches.withLock { $0 }
        #expect(sizes.reduce(0, +) == 60 && sizes.allSatisfy { $0 <= 8 } && sizes.contains { $0 > 1 },
                "batch sizes \(sizes)")
        task.cancel()
        _ = try? await task.value
        #expect(try drain("\(service).events", settings: settings).isEmpty, "a delivery was left unacked")
        let dead = try drain("\(service).events.dead", settings: settings)
        let window = try dead.first?.envelope.get().decode(WindowAdded.self).window
        #expect(dead.count == 1 && window == 13)
    }

    @Test("past its bytes limit the consumer stops reading: 20 queued events of 700 bytes come at most 2 at a time under a 1 KiB limit, each settled once")
    func bytesLimit() async throws {
        let settings = try Broker.settings()
        let service = "bytes\(UUID().uuidString.prefix(6).lowercased())"
        let spec = AMQPConsumer.QueueSpec(service: service, mode: .durable, prefetch: 100, policy: .noRetries(),
                                          batchSize: 100, maxInFlightBytes: 1024)
        let declaring = AMQPConsumer(settings: settings, queue: spec, bindings: [WindowAdded.routingKey])
        let first = Task { try await declaring.run(handler: { _ in .ack }) }
        try await TransportConformance.waitUntil("declared") { declaring.isReady }
        first.cancel()
        _ = try? await first.value
        let envelopes = (0..<20).map { _ in
            EventEnvelope(routingKey: WindowAdded.routingKey, appId: "test", body: Data(repeating: UInt8(ascii: " "), count: 700))
        }
        try await AMQPPublisher(settings: settings).publish(envelopes)

        let consumer = AMQPConsumer(settings: settings, queue: spec, bindings: [WindowAdded.routingKey])
        let batches = Mutex<[Int]>([])
        let task = Task {
            try await consumer.run(batchHandler: { deliveries in
                batches.withLock { $0.append(deliveries.count) }
                try? await Task.sleep(for: .milliseconds(10))
                return deliveries.map { _ in .ack }
            })
        }
        defer { task.cancel() }
        try await TransportConformance.waitUntil("20 handled") { batches.withLock { $0.reduce(0, +) } >= 20 }
        try await Task.sleep(for: .milliseconds(300))
        let sizes = batches.withLock { $0 }
        #expect(sizes.reduce(0, +) == 20 && sizes.allSatisfy { $0 <= 2 }, "batch sizes \(sizes)")
        task.cancel()
        _ = try? await task.value
        #expect(try drain("\(service).events", settings: settings).isEmpty, "a delivery was left unacked")
    }
}
