import EventCatalog

/// An in-process broker with the same publisher and consumer protocols as AMQP, for unit
/// tests of handlers and the bus. Routing follows a topic exchange (`*`, `#`), which is a
/// superset of a direct exchange for the catalog's keys. A consumer follows its
/// ``RetryPolicy`` as the AMQP one does, without the delays: a retry comes back at once, as
/// the next attempt, until the policy's last attempt; then the delivery is dead-lettered.
///
/// ```swift
/// let transport = InMemoryTransport()
/// let consumer = await transport.consumer(queue: "returns.events", bindings: [PricesRecorded.routingKey])
/// try await transport.publish([envelope])
/// ```
public final class InMemoryTransport: EventPublisher {
    private let broker = Broker()

    public init() {}

    public func publish(_ envelopes: [EventEnvelope]) async throws {
        await broker.publish(envelopes)
    }

    /// Declares `queue` (if new), binds it to `bindings` and returns a consumer of it that
    /// retries and dead-letters as `policy` says.
    public func consumer(queue: String, bindings: [String], policy: RetryPolicy = RetryPolicy(),
                         batchSize: Int = 256) async -> InMemoryConsumer {
        await broker.declare(queue: queue, bindings: bindings)
        return InMemoryConsumer(queue: queue, broker: broker, policy: policy, batchSize: max(1, batchSize))
    }

    /// Every envelope published so far, in order.
    public var published: [EventEnvelope] {
        get async { await broker.log }
    }

    /// Messages waiting in `queue`.
    public func depth(of queue: String) async -> Int { await broker.depth(of: queue) }

    /// Removes and returns the messages dead-lettered by consumers of `queue`.
    public func takeDeadLetters(from queue: String) async -> [Delivery] { await broker.takeRejected(queue) }

    actor Broker {
        var log: [EventEnvelope] = []
        var bindings: [String: [String]] = [:]
        var queues: [String: [Delivery]] = [:]
        var waiters: [String: [CheckedContinuation<Void, Never>]] = [:]
        var rejected: [String: [Delivery]] = [:]

        func declare(queue: String, bindings keys: [String]) {
            if queues[queue] == nil { queues[queue] = [] }
            bindings[queue, default: []].append(contentsOf: keys)
        }

        func publish(_ envelopes: [EventEnvelope]) {
            for envelope in envelopes {
                log.append(envelope)
                for (queue, keys) in bindings
                where keys.contains(where: { RoutingKey.matches(pattern: $0, key: envelope.routingKey) }) {
                    enqueue(queue, Delivery(envelope: envelope, routingKey: envelope.routingKey,
                                            body: Array(envelope.body), redelivered: false),
                            front: false)
                }
            }
        }

        func enqueue(_ queue: String, _ delivery: Delivery, front: Bool) {
            if front { queues[queue, default: []].insert(delivery, at: 0) } else {
                queues[queue, default: []].append(delivery)
            }
            let waiting = waiters.removeValue(forKey: queue) ?? []
            waiting.forEach { $0.resume() }
        }

        /// What waits in `queue`, up to `max` (waiting for one); empty when cancelled.
        func next(_ queue: String, max: Int) async -> [Delivery] {
            while queues[queue, default: []].isEmpty {
                if Task.isCancelled { return [] }
                await withCheckedContinuation { waiters[queue, default: []].append($0) }
            }
            let taken = Array(queues[queue]!.prefix(max))
            queues[queue]!.removeFirst(taken.count)
            return taken
        }

        func wake(_ queue: String) {
            let waiting = waiters.removeValue(forKey: queue) ?? []
            waiting.forEach { $0.resume() }
        }

        /// Settles a batch in order; the retried go back to the front of the queue, in order.
        func settle(_ queue: String, _ settled: [(Delivery, DeliveryOutcome)], _ policy: RetryPolicy) {
            var retried: [Delivery] = []
            for (delivery, outcome) in settled {
                switch policy.settlement(of: outcome, attempt: delivery.attempt) {
                case .ack: break
                case .retry:
                    retried.append(Delivery(envelope: delivery.envelope, routingKey: delivery.routingKey,
                                            body: delivery.body, redelivered: true, attempt: delivery.attempt + 1))
                case .deadLetter: rejected[queue, default: []].append(delivery)
                }
            }
            for delivery in retried.reversed() { enqueue(queue, delivery, front: true) }
        }

        func depth(of queue: String) -> Int { queues[queue]?.count ?? 0 }

        func takeRejected(_ queue: String) -> [Delivery] { rejected.removeValue(forKey: queue) ?? [] }
    }
}

/// A consumer of one in-memory queue: it takes what waits, up to its batch size, and settles
/// each in order before taking more, so order within the queue holds (a retry comes back
/// first).
public struct InMemoryConsumer: EventConsumer {
    let queue: String
    let broker: InMemoryTransport.Broker
    let policy: RetryPolicy
    let batchSize: Int

    /// Always: the queue is declared and bound when the consumer is made.
    public var isReady: Bool { true }

    public func run(batchHandler handler: @escaping DeliveryBatchHandler) async throws {
        try await withTaskCancellationHandler {
            while !Task.isCancelled {
                let deliveries = await broker.next(queue, max: batchSize)
                guard !deliveries.isEmpty else { break }
                let outcomes = await handler(deliveries)
                await broker.settle(queue, Array(zip(deliveries, outcomes)), policy)
            }
            try Task.checkCancellation()
        } onCancel: { [broker, queue] in
            Task { await broker.wake(queue) }
        }
    }
}
