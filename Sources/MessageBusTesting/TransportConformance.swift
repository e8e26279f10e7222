import EventCatalog
import Foundation
import MessageBus

/// Makes the publisher and consumers of one transport for the conformance scenarios.
public protocol TransportFixture: Sendable {
    /// A short name for messages (`in-memory`, `amqp`).
    var name: String { get }
    /// A publisher on the transport's exchange.
    func makePublisher() async throws -> any EventPublisher
    /// A consumer of a fresh queue bound to `bindings`, delivering at most `prefetch` ahead,
    /// retrying and dead-lettering as `policy` says.
    func makeConsumer(queue: String, bindings: [String], prefetch: UInt16,
                      policy: RetryPolicy) async throws -> any EventConsumer
    /// The events dead-lettered from `queue` so far (taken: a second call does not return them).
    func takeDeadLetters(of queue: String) async throws -> [EventEnvelope]
}

extension TransportFixture {
    /// A consumer with the default policy (5 attempts).
    func makeConsumer(queue: String, bindings: [String], prefetch: UInt16) async throws -> any EventConsumer {
        try await makeConsumer(queue: queue, bindings: bindings, prefetch: prefetch, policy: RetryPolicy())
    }
}

/// A transport with connections a broker can drop (the reconnect scenario): AMQP. The
/// in-memory transport has none, so it does not run that scenario.
public protocol ConnectionDroppingFixture: TransportFixture {
    /// Cuts `consumer`'s and every publisher's connections from the broker's side.
    func dropConnections(of consumer: any EventConsumer) async throws
}

/// A scenario failed; the message says how.
public struct ConformanceFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The one contract every transport passes (in-memory in unit tests, AMQP in integration
/// tests): each scenario throws `ConformanceFailure` when the transport breaks it.
public enum TransportConformance {
    /// Payload and every property arrive intact; only bound routing keys arrive.
    public static func publishConsume(_ fixture: some TransportFixture) async throws {
        let queue = uniqueQueue("roundtrip")
        let key = WindowAdded.routingKey
        let consumer = try await fixture.makeConsumer(queue: queue, bindings: [key], prefetch: 10)
        let inbox = Inbox()
        let task = Task { try await consumer.run { delivery in await inbox.add(delivery); return .ack } }
        defer { task.cancel() }
        try await waitUntil("\(fixture.name) consumer ready") { consumer.isReady }

        let sent = try (1...3).map { i in
            try EventEnvelope(WindowAdded(window: i), appId: "conformance", correlationId: "op-\(i)",
                              causationId: "cause-\(i)", traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                              timestamp: Date(timeIntervalSince1970: 1_700_000_000 + Double(i)))
        }
        let publisher = try await fixture.makePublisher()
        let unrelated = try EventEnvelope(PricesRecorded(symbol: "X", firstDate: CalendarDate("2024-01-02")!,
                                                         lastDate: CalendarDate("2024-01-02")!, count: 1))
        try await publisher.publish([sent[0], unrelated, sent[1], sent[2]])
        try await waitUntil("\(fixture.name) 3 deliveries") { await inbox.count >= 3 }
        try await Task.sleep(for: .milliseconds(200))
        let received = await inbox.items
        guard received.count == 3 else {
            throw ConformanceFailure("expected 3 deliveries, got \(received.count): an unbound key arrived?")
        }
        for (expected, delivery) in zip(sent, received) {
            guard let got = delivery.envelope else { throw ConformanceFailure("delivery without envelope") }
            guard got == expected else { throw ConformanceFailure("sent \(expected)\nreceived \(got)") }
            guard delivery.routingKey == key, !delivery.redelivered else {
                throw ConformanceFailure("bad routing key or redelivered flag: \(delivery)")
            }
        }
    }

    /// A delivery settled with `.retry` comes again as the next attempt; `.ack` ends it.
    public static func retryRedelivers(_ fixture: some TransportFixture) async throws {
        let queue = uniqueQueue("retry")
        let consumer = try await fixture.makeConsumer(queue: queue, bindings: [WindowAdded.routingKey], prefetch: 1)
        let inbox = Inbox()
        let task = Task {
            try await consumer.run { delivery in
                await inbox.add(delivery)
                return delivery.attempt > 1 ? .ack : .retry(reason: "conformance")
            }
        }
        defer { task.cancel() }
        try await waitUntil("\(fixture.name) consumer ready") { consumer.isReady }
        let envelope = try EventEnvelope(WindowAdded(window: 7))
        try await fixture.makePublisher().publish([envelope])
        try await waitUntil("\(fixture.name) redelivery") { await inbox.count >= 2 }
        let items = await inbox.items
        guard items[0].envelope == envelope, items[1].envelope == envelope,
              items[0].attempt == 1, items[1].attempt == 2, items[1].routingKey == WindowAdded.routingKey
        else { throw ConformanceFailure("expected the same event again as attempt 2: \(items)") }
        try await Task.sleep(for: .milliseconds(200))
        guard await inbox.count == 2 else { throw ConformanceFailure("acked delivery came again") }
    }

    /// A delivery that keeps failing gets exactly the policy's attempts (1, 2, 3), then is
    /// dead-lettered, intact, and comes no more; the queue goes on with the next delivery.
    public static func deadLetterAfterAttempts(_ fixture: some TransportFixture) async throws {
        let queue = uniqueQueue("dead")
        let policy = RetryPolicy(maxAttempts: 3, baseDelayMs: 20, maxDelayMs: 50)
        let consumer = try await fixture.makeConsumer(queue: queue, bindings: [WindowAdded.routingKey], prefetch: 1,
                                                      policy: policy)
        let inbox = Inbox()
        let poison = try EventEnvelope(WindowAdded(window: 13), correlationId: "op-dead")
        let task = Task {
            try await consumer.run { delivery in
                await inbox.add(delivery)
                // The handler asks for a retry every time: the policy alone ends it.
                return delivery.envelope == poison ? .retry(reason: "conformance") : .ack
            }
        }
        defer { task.cancel() }
        try await waitUntil("\(fixture.name) consumer ready") { consumer.isReady }
        let next = try EventEnvelope(WindowAdded(window: 14))
        try await fixture.makePublisher().publish([poison, next])
        let deadLetters = DeadLetters()
        try await waitUntil("\(fixture.name) dead letter") {
            await deadLetters.add((try? await fixture.takeDeadLetters(of: queue)) ?? [])
            return await !deadLetters.items.isEmpty
        }
        try await waitUntil("\(fixture.name) the next delivery") { await inbox.items.contains { $0.envelope == next } }
        try await Task.sleep(for: .milliseconds(300))
        let attempts = await inbox.items.filter { $0.envelope == poison }.map(\.attempt)
        guard attempts == [1, 2, 3] else {
            throw ConformanceFailure("expected attempts [1, 2, 3] before the dead letter, got \(attempts)")
        }
        await deadLetters.add(try await fixture.takeDeadLetters(of: queue))
        let dead = await deadLetters.items
        guard dead == [poison] else { throw ConformanceFailure("expected the poison event dead-lettered once: \(dead)") }
    }

    /// With prefetch 1, one queue delivers in publish order.
    public static func orderWithPrefetchOne(_ fixture: some TransportFixture, count: Int = 50) async throws {
        let queue = uniqueQueue("order")
        let consumer = try await fixture.makeConsumer(queue: queue, bindings: [WindowAdded.routingKey], prefetch: 1)
        let inbox = Inbox()
        let task = Task { try await consumer.run { delivery in await inbox.add(delivery); return .ack } }
        defer { task.cancel() }
        try await waitUntil("\(fixture.name) consumer ready") { consumer.isReady }
        let publisher = try await fixture.makePublisher()
        let sent = try (0..<count).map { try EventEnvelope(WindowAdded(window: $0)) }
        for chunk in stride(from: 0, to: count, by: 7) {
            try await publisher.publish(Array(sent[chunk..<min(count, chunk + 7)]))
        }
        do {
            try await waitUntil("\(fixture.name) \(count) deliveries") { await inbox.count >= count }
        } catch {
            throw ConformanceFailure("\(error); \(await inbox.count) arrived")
        }
        let ids = await inbox.items.compactMap { $0.envelope?.eventId }
        guard ids == sent.map(\.eventId) else { throw ConformanceFailure("deliveries out of order") }
    }

    /// A consumer stopped mid-stream settles what it handled; the rest is delivered to the
    /// next consumer of the queue; nothing is lost and nothing handled comes again.
    public static func noLossWhileClosing(_ fixture: some TransportFixture, count: Int = 200) async throws {
        let queue = uniqueQueue("closing")
        let first = try await fixture.makeConsumer(queue: queue, bindings: [WindowAdded.routingKey], prefetch: 20)
        let handled = Inbox()
        let task1 = Task {
            try await first.run { delivery in
                await handled.add(delivery)
                try? await Task.sleep(for: .milliseconds(2))
                return .ack
            }
        }
        try await waitUntil("\(fixture.name) consumer ready") { first.isReady }
        let sent = try (0..<count).map { try EventEnvelope(WindowAdded(window: $0)) }
        try await fixture.makePublisher().publish(sent)
        try await waitUntil("\(fixture.name) some handled") { await handled.count >= count / 5 }
        task1.cancel()
        _ = await task1.result
        let second = try await fixture.makeConsumer(queue: queue, bindings: [WindowAdded.routingKey], prefetch: 20)
        let task2 = Task { try await second.run { await handled.add($0); return .ack } }
        defer { task2.cancel() }
        try await waitUntil("\(fixture.name) all handled") {
            Set(await handled.items.compactMap { $0.envelope?.eventId }).count == count
        }
        try await Task.sleep(for: .milliseconds(300))
        let ids = await handled.items.compactMap { $0.envelope?.eventId }
        guard ids.count == Set(ids).count else {
            throw ConformanceFailure("\(ids.count - Set(ids).count) deliveries came twice after a clean stop")
        }
    }

    /// After the broker drops the connections, the consumer reconnects, declares its
    /// topology again and resumes; a publish after the drop gets through (a publisher may
    /// fail once while it notices, as the outbox relay expects).
    public static func reconnect(_ fixture: some ConnectionDroppingFixture) async throws {
        let queue = uniqueQueue("reconnect")
        let consumer = try await fixture.makeConsumer(queue: queue, bindings: [WindowAdded.routingKey], prefetch: 10)
        let inbox = Inbox()
        let task = Task { try await consumer.run { await inbox.add($0); return .ack } }
        defer { task.cancel() }
        try await waitUntil("\(fixture.name) consumer ready") { consumer.isReady }
        let publisher = try await fixture.makePublisher()
        let before = try EventEnvelope(WindowAdded(window: 1))
        try await publisher.publish([before])
        try await waitUntil("\(fixture.name) first delivery") { await inbox.count == 1 }
        try await fixture.dropConnections(of: consumer)
        let after = try EventEnvelope(WindowAdded(window: 2))
        var published = false
        for _ in 0..<50 where !published {
            do {
                try await publisher.publish([after])
                published = true
            } catch {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        guard published else { throw ConformanceFailure("could not publish after the drop") }
        try await waitUntil("\(fixture.name) delivery after reconnect") {
            await inbox.items.contains { $0.envelope?.eventId == after.eventId }
        }
    }

    /// Runs every scenario that applies to a transport without connections.
    public static func allWithoutReconnect(_ fixture: some TransportFixture) async throws {
        try await publishConsume(fixture)
        try await retryRedelivers(fixture)
        try await deadLetterAfterAttempts(fixture)
        try await orderWithPrefetchOne(fixture)
        try await noLossWhileClosing(fixture)
    }

    /// Runs every scenario, the reconnect one included.
    public static func all(_ fixture: some ConnectionDroppingFixture) async throws {
        try await allWithoutReconnect(fixture)
        try await reconnect(fixture)
    }

    static func uniqueQueue(_ name: String) -> String {
        "conformance.\(name).\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// Polls `condition` until it holds, failing after `seconds` (30 by default: a deadline for
    /// something that must happen, not a speed check — the whole suite on 2 cores, with a CPU
    /// hog beside it, once took 10 s to see 50 deliveries on a quorum queue).
    public static func waitUntil(_ what: String, seconds: Double = 30,
                                 _ condition: @Sendable () async -> Bool) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if await condition() { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw ConformanceFailure("timed out waiting for \(what)")
    }
}

/// Dead-lettered events, as taken.
actor DeadLetters {
    var items: [EventEnvelope] = []
    func add(_ more: [EventEnvelope]) { items += more }
}

/// Deliveries in arrival order.
actor Inbox {
    var items: [Delivery] = []
    var count: Int { items.count }
    func add(_ delivery: Delivery) { items.append(delivery) }
}
