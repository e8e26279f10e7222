import Synchronization
@testable import AMQPTransport
import EventCatalog
import Foundation
import MessageBus
import MessageBusTesting
import Testing

/// Reads every message of `queue` (acking them), through a connection of its own.
func drain(_ queue: String, settings: AMQPSettings) throws -> [AMQPMessage] {
    let connection = try RabbitMQConnection.connect(settings: settings).connection
    defer { connection.close() }
    var out: [AMQPMessage] = []
    while let delivery = try connection.get(queue: queue) {
        out.append(delivery.message)
        try connection.ack(delivery.deliveryTag)
    }
    return out
}

@Suite("Retries, dead letters and unroutable events (real RabbitMQ)", .enabled(if: Broker.available, Broker.skipReason))
struct RetryAndDeadLetterTests {
    let service = "dlq\(UUID().uuidString.prefix(6).lowercased())"

    static let policy = RetryPolicy(maxAttempts: 3, baseDelayMs: 150, maxDelayMs: 400)

    func consumer(_ settings: AMQPSettings, attempts: Int = 3, queueType: QueueType = .classic) -> AMQPConsumer {
        AMQPConsumer(settings: settings,
                     queue: .init(service: service, mode: .durable, prefetch: 5,
                                  policy: RetryPolicy(maxAttempts: attempts, baseDelayMs: Self.policy.baseDelayMs,
                                                      maxDelayMs: Self.policy.maxDelayMs),
                                  queueType: queueType),
                     bindings: [WindowAdded.routingKey])
    }

    @Test("a handler that keeps failing is retried after each delay, then dead-lettered with the error, the attempts and the routing key",
          arguments: [QueueType.classic, .quorum])
    func retriesThenDeadLetter(queueType: QueueType) async throws {
        let settings = try Broker.settings()
        let consumer = consumer(settings, queueType: queueType)
        let seen = Received()
        let times = Mutex<[ContinuousClock.Instant]>([])
        let task = Task {
            try await consumer.run { delivery in
                times.withLock { $0.append(.now) }
                await seen.add(delivery)
                return .retry(reason: "database is locked")
            }
        }
        defer { task.cancel() }
        try await TransportConformance.waitUntil("ready") { consumer.isReady }
        let envelope = try EventEnvelope(WindowAdded(window: 9), correlationId: "op-dlq")
        try await AMQPPublisher(settings: settings).publish([envelope])
        try await TransportConformance.waitUntil("3 attempts") { await seen.count >= 3 }
        try await TransportConformance.waitUntil("dead-lettered") { consumer.deadLetteredCount == 1 }
        let attempts = await seen.items
        #expect(attempts.map(\.attempt) == [1, 2, 3])
        #expect(attempts.allSatisfy { $0.envelope == envelope && $0.routingKey == WindowAdded.routingKey })
        #expect(consumer.retriedCount == 2)
        // Each retry came after its delay (the delay queue's message TTL), not at once.
        let at = times.withLock { $0 }
        for attempt in 1..<at.count {
            let delay = Duration.milliseconds(Self.policy.delayMs(after: attempt))
            #expect(at[attempt] - at[attempt - 1] >= delay, "attempt \(attempt + 1) after \(at[attempt] - at[attempt - 1])")
        }
        if Broker.controllable {
            // The queues are of the type asked for.
            let types = try await Broker.ctl("list_queues", "name", "type")
            for queue in ["\(service).events", "\(service).events.dead", "\(service).events.retry.150ms"] {
                #expect(types.contains("\(queue)\t\(queueType.rawValue)"), "\(types)")
            }
        }

        let dead = try drain("\(service).events.dead", settings: settings)
        #expect(dead.count == 1)
        let message = try #require(dead.first)
        #expect(message.headers["x-stega-error"]?.string == "database is locked")
        #expect(message.headers["x-stega-attempts"]?.int == 3)
        #expect(message.headers["x-stega-routing-key"]?.string == WindowAdded.routingKey)
        #expect(try message.envelope.get() == envelope)
        #expect(message.deliveryMode == 2)
        try await Task.sleep(for: .milliseconds(300))
        #expect(await seen.count == 3, "a dead-lettered message came back")
    }

    @Test("an undecodable message goes straight to the dead-letter queue and the consumer goes on",
          arguments: [QueueType.classic, .quorum])
    func deadLetterAtOnce(queueType: QueueType) async throws {
        let settings = try Broker.settings()
        let consumer = consumer(settings, queueType: queueType)
        let seen = Received()
        let task = Task {
            try await consumer.run { delivery in
                await seen.add(delivery)
                let event = try? delivery.envelope?.decode(WindowAdded.self)
                return event == nil ? .deadLetter(reason: "undecodable") : .ack
            }
        }
        defer { task.cancel() }
        try await TransportConformance.waitUntil("ready") { consumer.isReady }
        let publisher = AMQPPublisher(settings: settings)
        var poison = EventEnvelope(routingKey: WindowAdded.routingKey, appId: "x", body: Data("garbage".utf8))
        poison.eventId = UUID()
        try await publisher.publish([poison, try EventEnvelope(WindowAdded(window: 1))])
        try await TransportConformance.waitUntil("both seen") { await seen.count >= 2 }
        try await TransportConformance.waitUntil("dead-lettered") { consumer.deadLetteredCount == 1 }
        let dead = try drain("\(service).events.dead", settings: settings)
        #expect(dead.map(\.body) == [Array("garbage".utf8)])
        #expect(dead.first?.headers["x-stega-attempts"]?.int == 1)
    }

    @Test("replay-dead-letters moves dead letters back to the work queue with attempts reset",
          arguments: [QueueType.classic, .quorum])
    func replay(queueType: QueueType) async throws {
        let settings = try Broker.settings()
        let failing = consumer(settings, attempts: 1, queueType: queueType)
        let task1 = Task { try await failing.run { _ in .retry(reason: "down") } }
        try await TransportConformance.waitUntil("ready") { failing.isReady }
        let envelopes = try (1...3).map { try EventEnvelope(WindowAdded(window: $0)) }
        try await AMQPPublisher(settings: settings).publish(envelopes)
        try await TransportConformance.waitUntil("dead-lettered") { failing.deadLetteredCount == 3 }
        task1.cancel()
        _ = await task1.result

        let report = try AMQPAdmin.replayDeadLetters(settings: settings, service: service, limit: 100, queueType: queueType)
        #expect(report.moved == 3)
        let healthy = consumer(settings, queueType: queueType)
        let seen = Received()
        let task2 = Task { try await healthy.run { await seen.add($0); return .ack } }
        defer { task2.cancel() }
        try await TransportConformance.waitUntil("replayed") { await seen.count == 3 }
        let items = await seen.items
        #expect(Set(items.compactMap { $0.envelope?.eventId }) == Set(envelopes.map(\.eventId)))
        #expect(items.allSatisfy { $0.attempt == 1 && $0.routingKey == WindowAdded.routingKey })
        #expect(try drain("\(service).events.dead", settings: settings).isEmpty)
    }

    @Test("an event no queue is bound to is kept in events.unroutable, and replay-unroutable delivers it once bound")
    func unroutable() async throws {
        let settings = try Broker.settings()
        let envelope = try EventEnvelope(WindowAdded(window: 77), correlationId: "op-unroutable")
        let publisher = AMQPPublisher(settings: settings)
        try await publisher.publish([envelope])
        #expect(publisher.unroutableCount == 1)
        // Other tests park events in the same queue: look for ours, and put the rest back.
        let parked = try drain(AMQPPublisher.unroutableQueue, settings: settings)
        let ours = try #require(parked.first { $0.messageId == envelope.eventId.uuidString.lowercased() })
        #expect(try ours.envelope.get() == envelope)
        let connection = try RabbitMQConnection.connect(settings: settings).connection
        for message in parked { try connection.publish(message, exchange: "", routingKey: AMQPPublisher.unroutableQueue, mandatory: false) }
        connection.close()

        let consumer = consumer(settings)
        let seen = Received()
        let task = Task { try await consumer.run { await seen.add($0); return .ack } }
        defer { task.cancel() }
        try await TransportConformance.waitUntil("ready") { consumer.isReady }
        let report = try AMQPAdmin.replayUnroutable(settings: settings, limit: 100_000)
        #expect(report.moved >= 1)
        try await TransportConformance.waitUntil("replayed event") {
            await seen.items.contains { $0.envelope == envelope }
        }
    }
}
