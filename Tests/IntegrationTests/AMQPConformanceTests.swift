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
        try await TransportConformance.waitUntil("consumer reconnected") { amqp.reconnectCount >= 1 && amqp.isReady }
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
        try await TransportConformance.waitUntil("every delivery") { await got.count >= sent.count }
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

    @Test("an instance queue keeps what is published while its consumer is away; a failed delivery is acked, not retried",
          arguments: [QueueType.classic, .quorum])
    func instanceQueueOutlivesItsConsumer(type: QueueType) async throws {
        let settings = try Broker.settings()
        let name = "inst\(UUID().uuidString.prefix(6).lowercased()).events"
        let spec = AMQPConsumer.QueueSpec(service: "boundary", mode: .durable, queueType: type,
                                          instance: .init(name: name, expiresMs: 60_000, maxLength: 1_000))
        let first = AMQPConsumer(settings: settings, queue: spec, bindings: [WindowAdded.routingKey])
        let firstRun = Task { try await first.run { _ in .ack } }
        try await TransportConformance.waitUntil("ready") { first.isReady }
        #expect(first.queueName == name)
        firstRun.cancel()
        try await firstRun.value

        // Published while no one consumes: kept for the next consumer of that name.
        let publisher = AMQPPublisher(settings: settings)
        try await publisher.publish((4...6).map { try EventEnvelope(WindowAdded(window: $0)) })
        let second = AMQPConsumer(settings: settings, queue: spec, bindings: [WindowAdded.routingKey])
        let got = Received()
        let secondRun = Task { try await second.run { delivery in
            await got.add(delivery)
            return .retry(reason: "refused by the test")
        } }
        defer { secondRun.cancel() }
        try await TransportConformance.waitUntil("the three kept") { await got.count >= 3 }
        let windows = await got.items.map { try? JSONDecoder().decode(WindowAdded.self, from: Data($0.body)).window }
        #expect(windows == [4, 5, 6])
        // .retry on an instance queue: logged and acked — nothing comes back, no delay queue.
        try await Task.sleep(for: .milliseconds(500))
        #expect(await got.count == 3)
        #expect(second.retriedCount == 0)
        let listing = try await Broker.ctl("list_queues", "name", "messages", "arguments")
        let row = listing.split(separator: "\n").first { $0.hasPrefix(name + "\t") }.map(String.init) ?? ""
        if Broker.controllable {
            #expect(row.hasPrefix("\(name)\t0\t"), "\(listing)")
            #expect(row.contains("x-expires") && row.contains("60000") && row.contains("drop-head"), "\(row)")
            #expect(row.contains("quorum") == (type == .quorum), "\(row)")
            #expect(!listing.contains("boundary.events.retry"))
        }
        publisher.shutdown()
    }

    @Test("an instance queue the broker refuses (declared otherwise before): the next connection consumes a server-named queue")
    func refusedInstanceQueueFallsBack() async throws {
        let settings = try Broker.settings()
        let name = "inst\(UUID().uuidString.prefix(6).lowercased()).events"
        // A queue of that name with another expiry: 406 PRECONDITION_FAILED. The broker drops it
        // 2 minutes after this test (an expiry of 5 s let it vanish before the consumer's
        // declaration when the test pool was starved, and the test failed).
        let (other, _) = try RabbitMQConnection.connect(settings: settings)
        _ = try other.declareQueue(name, durable: true, exclusive: false, autoDelete: false,
                                   arguments: ["x-expires": .int(120_000)])
        other.close()
        let consumer = AMQPConsumer(settings: settings, queue: .init(service: "boundary", mode: .durable,
                                                                    instance: .init(name: name, expiresMs: 60_000, maxLength: 10)),
                                    bindings: [WindowAdded.routingKey])
        let got = Received()
        let task = Task { try await consumer.run { await got.add($0); return .ack } }
        defer { task.cancel() }
        try await TransportConformance.waitUntil("ready") { consumer.isReady }
        #expect(consumer.queueName?.hasPrefix("amq.gen-") == true, "\(consumer.queueName ?? "none")")
        try await AMQPPublisher(settings: settings).publish([try EventEnvelope(WindowAdded(window: 7))])
        try await TransportConformance.waitUntil("delivery") { await got.count == 1 }
        // Manual acks on the server-named queue: nothing stays unacked.
        try await Task.sleep(for: .milliseconds(300))
        if Broker.controllable {
            let listing = try await Broker.ctl("list_queues", "name", "messages_unacknowledged")
            let row = listing.split(separator: "\n").first { $0.hasPrefix((consumer.queueName ?? "?") + "\t") }
            #expect(row.map(String.init) == "\(consumer.queueName ?? "")\t0", "\(listing)")
        }
    }

}
