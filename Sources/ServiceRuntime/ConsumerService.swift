import EventCatalog
import Foundation
import Logging
import Metrics
import MessageBus
import ServiceLifecycle
import Synchronization

/// Runs a consumer and dispatches every delivery through the service's bus.
///
/// A handler that returns acks. A batch that failed because the store is down
/// (``StoreUnavailable``) is held and handled again once the store answers. Every other
/// failure goes to the ``RetryPolicy``: an undecodable
/// message, or one no handler knows, is dead-lettered at once; a failing handler's message is
/// retried while attempts remain, then dead-lettered; a dead-lettered event of an operation
/// raises the policy's `operation_failed`, stored in the outbox. On graceful shutdown the
/// consumer stops taking deliveries, finishes the one in hand, settles what it handled (the
/// rest is delivered again) and closes.
public struct ConsumerService: Service {
    let consumer: any EventConsumer
    let bus: MessageBus
    let logger: Logger
    let policy: RetryPolicy
    /// Where the `operation_failed` events of dead letters are stored.
    let database: ServiceDatabase
    /// `handler_duration_seconds` per routing key, made once (a registry lookup per event costs).
    private let timers = HandlerTimers()
    private let handled = ActivityCount()

    /// Deliveries handled since start (whatever their outcome): an activity signal.
    public var handledCount: Int { handled.value }

    /// Whether the consumer's queue is bound and consuming.
    public var isReady: Bool { consumer.isReady }

    public init(consumer: any EventConsumer, bus: MessageBus, policy: RetryPolicy, database: ServiceDatabase,
                logger: Logger) {
        self.consumer = consumer
        self.bus = bus
        self.logger = logger
        self.policy = policy
        self.database = database
    }

    public func run() async throws {
        try await cancelWhenGracefulShutdown {
            try await consumer.run(batchHandler: { deliveries in await handle(deliveries) })
        }
    }

    /// Dispatches one delivery and decides its fate.
    public func handle(_ delivery: Delivery) async -> DeliveryOutcome {
        await handle([delivery])[0]
    }

    /// Dispatches a batch of deliveries through the bus (``MessageBus/dispatch(_:)-([EventEnvelope])``:
    /// a batch handler applies its events in one transaction) and decides the fate of each.
    public func handle(_ deliveries: [Delivery]) async -> [DeliveryOutcome] {
        handled.increment(by: deliveries.count)
        var outcomes = [DeliveryOutcome?](repeating: nil, count: deliveries.count)
        var envelopes: [EventEnvelope] = []
        var positions: [Int] = []
        envelopes.reserveCapacity(deliveries.count)
        for (index, delivery) in deliveries.enumerated() {
            guard let envelope = delivery.envelope else {
                let reason = delivery.problem ?? ""  // always set when there is no envelope
                logger.error("dead-lettering a message that is not an event envelope",
                             metadata: ["amqp.routing_key": "\(delivery.routingKey)", "error": "\(reason)"])
                outcomes[index] = .deadLetter(reason: reason)
                continue
            }
            envelopes.append(envelope)
            positions.append(index)
        }
        let start = ContinuousClock.now
        var errors = await bus.dispatch(envelopes)
        // The store is down (PostgreSQL unreachable): the events are not at fault, and none was
        // applied. The batch stays in hand — no attempt spent, nothing dead-lettered — until
        // the store answers again, then goes through once more (what was applied is in the
        // inbox). The broker keeps the deliveries meanwhile, and redelivers them if this
        // process dies.
        var pause = Duration.milliseconds(200)
        while !Task.isCancelled, let down = errors.lazy.compactMap(Self.storeUnavailable).first {
            logger.warning("store unavailable: holding the batch until it answers",
                           metadata: ["batch.size": "\(envelopes.count)", "error": "\(down)"])
            while !Task.isCancelled {
                try? await Task.sleep(for: pause)
                pause = min(pause * 2, .seconds(5))
                if await database.isReadable() { break }
            }
            errors = await bus.dispatch(envelopes)
        }
        let elapsed = ContinuousClock.now - start
        // A batch's time, shared among its events (what each cost the worker).
        let share = elapsed / max(1, envelopes.count)
        let logHandled = logger.logLevel <= .info
        var timer: (key: String, timer: Timer)?
        for (envelope, (index, error)) in zip(envelopes, zip(positions, errors)) {
            // One lookup per run of a routing key, not one (and a lock) per event.
            if timer?.key != envelope.routingKey { timer = (envelope.routingKey, timers.timer(for: envelope.routingKey)) }
            timer?.timer.record(duration: share)
            guard let error else {
                if logHandled {
                    eventLogger(envelope).info("event handled", metadata: [
                        "handler.duration_ms": "\(String(format: "%.2f", Self.milliseconds(share)))",
                        "batch.size": "\(envelopes.count)",
                    ])
                }
                outcomes[index] = .ack
                continue
            }
            let permanent = (error as? BusError).map { $0.code == .undecodable || $0.code == .noHandler } ?? false
            let outcome = policy.outcome(failing: "\(error)", permanently: permanent, attempt: deliveries[index].attempt)
            if case .deadLetter = outcome {
                eventLogger(envelope).error("dead-lettering an event", metadata: [
                    "error": "\(error)", "attempt": "\(deliveries[index].attempt)",
                ])
                await reportFailure(of: envelope, reason: "\(error)")
            } else {
                eventLogger(envelope).warning("event handler failed", metadata: ["error": "\(error)", "attempt": "\(deliveries[index].attempt)"])
            }
            outcomes[index] = outcome
        }
        return outcomes.map { $0! }
    }

    /// The ``StoreUnavailable`` behind `error` (as thrown, or as the bus's wrapped cause).
    static func storeUnavailable(_ error: (any Error)?) -> StoreUnavailable? {
        (error as? StoreUnavailable) ?? ((error as? BusError)?.cause as? StoreUnavailable)
    }

    private static func milliseconds(_ duration: Duration) -> Double {
        Double(duration.components.attoseconds) / 1e15 + Double(duration.components.seconds) * 1000
    }

    /// The logger of `envelope`'s messages, built only when something is logged.
    private func eventLogger(_ envelope: EventEnvelope) -> Logger {
        var logger = self.logger
        logger[metadataKey: "amqp.routing_key"] = "\(envelope.routingKey)"
        logger[metadataKey: "bus.event_id"] = "\(envelope.eventId.lowercaseText)"
        logger[metadataKey: "bus.correlation_id"] = "\(envelope.correlationId ?? "")"
        return logger
    }

    /// Stores the policy's `operation_failed` for the operation of `envelope` (dead-lettered),
    /// so the client learns the outcome.
    func reportFailure(of envelope: EventEnvelope, reason: String) async {
        guard let event = policy.operationFailed(for: envelope, service: bus.appId, reason: reason)
        else { return }
        let context = HandlerContext(metadata: MessageMetadata(handling: envelope), appId: bus.appId)
        do {
            try context.raise(event)
            try await database.storeRaised(context)
            logger.error("operation failed", metadata: ["bus.correlation_id": "\(event.failure.operationId)", "error": "\(reason)"])
        } catch {
            logger.error("could not record operation_failed", metadata: ["error": "\(error)"])
        }
    }
}

/// `handler_duration_seconds{routing_key}` timers, one per routing key.
final class HandlerTimers: Sendable {
    private let timers = Mutex<[String: Timer]>([:])

    func timer(for routingKey: String) -> Timer {
        timers.withLock { timers in
            if let timer = timers[routingKey] { return timer }
            let timer = Timer(label: "handler_duration_seconds", dimensions: [("routing_key", routingKey)],
                              preferredDisplayUnit: .seconds)
            timers[routingKey] = timer
            return timer
        }
    }
}
