@testable import AMQPTransport
import EventCatalog
import Synchronization
import Foundation
import MessageBus
import MessageBusTesting
import Testing

final class AMQPFixture: ConnectionDroppingFixture {
    let settings: AMQPSettings
    let mode: QueueMode
    let queueType: QueueType
    let publishers = Mutex<[AMQPPublisher]>([])
    let consumers = Mutex<[AMQPConsumer]>([])
    var name: String { "amqp-\(mode.rawValue)-\(queueType.rawValue)" }

    init(settings: AMQPSettings, mode: QueueMode, queueType: QueueType = .classic) {
        self.settings = settings
        self.mode = mode
        self.queueType = queueType
    }

    func makePublisher() async throws -> any EventPublisher {
        let publisher = AMQPPublisher(settings: settings, confirms: mode == .durable, persistent: mode == .durable)
        publishers.withLock { $0.append(publisher) }
        return publisher
    }

    func dropConnections(of consumer: any EventConsumer) async throws {
        let amqp = consumer as! AMQPConsumer
        var ports = Set(publishers.withLock { $0.compactMap(\.localPort) })
        if let port = amqp.localPort { ports.insert(port) }
        let closed = try await Broker.closeConnections(clientPorts: ports)
        guard closed >= 2 else { throw ConformanceFailure("closed \(closed) connections of \(ports)") }
        try await TransportConformance.waitUntil("consumer noticed") { !amqp.isConnected || amqp.reconnectCount > 0 }
        try await TransportConformance.waitUntil("consumer reconnected", seconds: 20) { amqp.reconnectCount >= 1 && amqp.isReady }
    }

    func makeConsumer(queue: String, bindings: [String], prefetch: UInt16,
                      policy: RetryPolicy) async throws -> any EventConsumer {
        let consumer = AMQPConsumer(settings: settings, queue: .init(service: queue, mode: mode, prefetch: prefetch, policy: policy,
                                                              queueType: queueType),
                                    bindings: bindings)
        consumers.withLock { $0.append(consumer) }
        return consumer
    }

    func takeDeadLetters(of queue: String) async throws -> [EventEnvelope] {
        try drain("\(queue).events.dead", settings: settings).compactMap { try? $0.envelope.get() }
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

    @Test("a delivery that keeps failing gets the policy's attempts, then is dead-lettered")
    func deadLetter() async throws {
        try await TransportConformance.deadLetterAfterAttempts(AMQPFixture(settings: Broker.settings(), mode: .durable))
    }

    @Test("a retried delivery comes back redelivered")
    func retry() async throws {
        try await TransportConformance.retryRedelivers(AMQPFixture(settings: Broker.settings(), mode: .durable))
    }

    @Test("per-queue order with prefetch 1")
    func order() async throws {
        try await TransportConformance.orderWithPrefetchOne(AMQPFixture(settings: Broker.settings(), mode: .durable))
    }

    @Test("no loss while closing: what was handled is not delivered again, the rest is")
    func noLossWhileClosing() async throws {
        try await TransportConformance.noLossWhileClosing(AMQPFixture(settings: Broker.settings(), mode: .durable))
    }

    @Test("every scenario on quorum queues (RabbitMQ's own, as installed): publish/consume, retries, dead letters, order, closing, reconnect",
          .enabled(if: Broker.controllable))
    func quorum() async throws {
        try await TransportConformance.all(AMQPFixture(settings: Broker.settings(), mode: .durable, queueType: .quorum))
    }

    @Test("reconnect after the broker closes the connections", .enabled(if: Broker.controllable))
    func reconnect() async throws {
        try await TransportConformance.reconnect(AMQPFixture(settings: Broker.settings(), mode: .durable))
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

    @Test("one publish of many messages: bodies across frame boundaries and past one write's 64 KiB arrive intact, in order",
          arguments: [QueueMode.durable, .transient])
    func framesOfABatch(mode: QueueMode) async throws {
        let settings = try Broker.settings()
        let consumer = AMQPConsumer(settings: settings, queue: .init(service: "frames\(UUID().uuidString.prefix(6))", mode: mode),
                                    bindings: [WindowAdded.routingKey])
        let got = Received()
        let task = Task { try await consumer.run { await got.add($0); return .ack } }
        defer { task.cancel() }
        try await TransportConformance.waitUntil("ready") { consumer.isReady }
        // frame_max is 131,072: a body frame holds 131,064 bytes. Around that, several frames,
        // and 60 small ones after them, so the frames of one call are written in several sends.
        let sizes = [0, 1, 131_063, 131_064, 131_065, 262_128, 300_001] + Array(repeating: 2_000, count: 60)
        let sent = sizes.enumerated().map { i, size in
            EventEnvelope(routingKey: WindowAdded.routingKey, correlationId: "op-\(i)", appId: "frames",
                          body: Data((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) }))
        }
        let publisher = AMQPPublisher(settings: settings, confirms: mode == .durable, persistent: mode == .durable)
        try await publisher.publish(sent)
        try await TransportConformance.waitUntil("every delivery", seconds: 20) { await got.count >= sent.count }
        let received = await got.items
        #expect(received.count == sent.count)
        for (expected, delivery) in zip(sent, received) {
            #expect(delivery.envelope == expected, "message \(expected.correlationId ?? "")")
            #expect(delivery.body == Array(expected.body))
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

}
