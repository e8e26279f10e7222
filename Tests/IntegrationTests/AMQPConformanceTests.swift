import AMQPTransport
import EventCatalog
import Foundation
import MessageBus
import MessageBusTesting
import Testing

struct AMQPFixture: TransportFixture {
    let settings: AMQPSettings
    let mode: QueueMode
    var name: String { "amqp-\(mode.rawValue)" }

    func makePublisher() async throws -> any EventPublisher {
        AMQPPublisher(settings: settings, confirms: mode == .durable, persistent: mode == .durable)
    }

    func makeConsumer(queue: String, bindings: [String], prefetch: UInt16) async throws -> any EventConsumer {
        AMQPConsumer(settings: settings,
                     queue: .init(service: queue, mode: mode, prefetch: prefetch, retryAttempts: 3, retryBaseDelayMs: 50),
                     bindings: bindings)
    }
}

@Suite("AMQP transport conformance (real RabbitMQ)", .enabled(if: Broker.available, Broker.skipReason))
struct AMQPConformanceTests {
    @Test("publish/consume with every property intact, durable mode")
    func publishConsumeDurable() async throws {
        try await TransportConformance.publishConsume(AMQPFixture(settings: Broker.settings(), mode: .durable))
    }

    @Test("publish/consume, transient mode (the seed's exclusive auto-ack queue)")
    func publishConsumeTransient() async throws {
        try await TransportConformance.publishConsume(AMQPFixture(settings: Broker.settings(), mode: .transient))
    }

    @Test("a retried delivery comes back redelivered")
    func retry() async throws {
        try await TransportConformance.retryRedelivers(AMQPFixture(settings: Broker.settings(), mode: .durable))
    }

    @Test("per-queue order with prefetch 1")
    func order() async throws {
        try await TransportConformance.orderWithPrefetchOne(AMQPFixture(settings: Broker.settings(), mode: .durable))
    }

    @Test("a topic exchange with a wildcard binding")
    func topic() async throws {
        let settings = try Broker.settings(exchangeType: "topic")
        let consumer = AMQPConsumer(settings: settings, queue: .init(service: "topic-\(UUID().uuidString.prefix(6))", mode: .durable),
                                    bindings: ["*.events.window_added"])
        let got = Received()
        let task = Task { try await consumer.run { await got.add($0); return .ack } }
        defer { task.cancel() }
        try await TransportConformance.waitUntil("ready") { consumer.isReady }
        try await AMQPPublisher(settings: settings).publish([try EventEnvelope(WindowAdded(window: 3))])
        try await TransportConformance.waitUntil("delivery") { await got.count == 1 }
    }
}

actor Received {
    var items: [Delivery] = []
    var count: Int { items.count }
    func add(_ d: Delivery) { items.append(d) }
}

@Suite("AMQP details (real RabbitMQ)", .enabled(if: Broker.available, Broker.skipReason))
struct AMQPDetailTests {
    @Test("the server's reply text becomes the Swift error: redeclaring an exchange with another type")
    func precondition() async throws {
        let direct = try Broker.settings()
        try await AMQPPublisher(settings: direct).publish([try EventEnvelope(WindowAdded(window: 1))])
        var topic = direct
        topic.exchangeType = "topic"
        let publisher = AMQPPublisher(settings: topic)
        do {
            try await publisher.publish([try EventEnvelope(WindowAdded(window: 1))])
            Issue.record("expected PRECONDITION_FAILED")
        } catch let error as AMQPError {
            #expect(error.code == .serverClosedChannel)
            #expect(error.message.contains("PRECONDITION_FAILED"), "\(error)")
            #expect(error.context.contains("amqp_exchange_declare"))
        }
        publisher.shutdown()
    }

    @Test("transient mode consumes from a server-named queue")
    func transientQueueName() async throws {
        let consumer = AMQPConsumer(settings: try Broker.settings(), queue: .init(service: "t", mode: .transient),
                                    bindings: [WindowAdded.routingKey])
        let task = Task { try await consumer.run { _ in .ack } }
        defer { task.cancel() }
        try await TransportConformance.waitUntil("ready") { consumer.isReady }
        #expect(consumer.queueName?.hasPrefix("amq.gen-") == true)
    }

    @Test("durable mode consumes <service>.events")
    func durableQueueName() async throws {
        let service = "svc\(UUID().uuidString.prefix(6).lowercased())"
        let consumer = AMQPConsumer(settings: try Broker.settings(), queue: .init(service: service, mode: .durable),
                                    bindings: [WindowAdded.routingKey])
        let task = Task { try await consumer.run { _ in .ack } }
        defer { task.cancel() }
        try await TransportConformance.waitUntil("ready") { consumer.isReady }
        #expect(consumer.queueName == "\(service).events")
    }

    @Test("a consumer stopped mid-stream settles what it handled; the rest is redelivered, none lost")
    func stopLosesNothing() async throws {
        let settings = try Broker.settings()
        let service = "stop\(UUID().uuidString.prefix(6).lowercased())"
        let sent = try (0..<200).map { try EventEnvelope(WindowAdded(window: $0)) }
        // Declare the queue first, then fill it.
        let first = AMQPConsumer(settings: settings, queue: .init(service: service, mode: .durable, prefetch: 20),
                                 bindings: [WindowAdded.routingKey])
        let handled = Received()
        let task1 = Task {
            try await first.run { delivery in
                await handled.add(delivery)
                try? await Task.sleep(for: .milliseconds(2))
                return .ack
            }
        }
        try await TransportConformance.waitUntil("ready") { first.isReady }
        try await AMQPPublisher(settings: settings).publish(sent)
        try await TransportConformance.waitUntil("some handled") { await handled.count >= 30 }
        task1.cancel()
        _ = await task1.result
        let second = AMQPConsumer(settings: settings, queue: .init(service: service, mode: .durable),
                                  bindings: [WindowAdded.routingKey])
        let task2 = Task { try await second.run { await handled.add($0); return .ack } }
        defer { task2.cancel() }
        try await TransportConformance.waitUntil("all handled") {
            Set(await handled.items.compactMap { $0.envelope?.eventId }).count == sent.count
        }
        // Whatever the first consumer acked is not delivered again.
        try await Task.sleep(for: .milliseconds(300))
        let ids = await handled.items.compactMap { $0.envelope?.eventId }
        let duplicates = ids.count - Set(ids).count
        #expect(duplicates == 0, "\(duplicates) deliveries came twice after a clean stop")
    }
}
