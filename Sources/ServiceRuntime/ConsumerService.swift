import EventCatalog
import Foundation
import Logging
import Metrics
import MessageBus
import ServiceLifecycle
import Synchronization

/// Runs a consumer and dispatches every delivery through the service's bus.
///
/// A handler that returns acks. An undecodable message, or one no handler knows, is
/// dead-lettered at once; a failing handler's message is retried by the transport with
/// back-off, then dead-lettered. On graceful shutdown the consumer stops taking deliveries,
/// finishes the one in hand, settles what it handled (the rest is delivered again) and closes.
public struct ConsumerService: Service {
    let consumer: any EventConsumer
    let bus: MessageBus
    let logger: Logger
    /// Handler attempts the transport makes before dead-lettering (1 in transient mode).
    let maxAttempts: Int
    /// Where `<service>.events.operation_failed` goes when an event fails for good.
    let failures: (any EventPublisher)?
    /// `handler_duration_seconds` per routing key, made once (a registry lookup per event costs).
    private let timers = HandlerTimers()
    private let handled = ActivityCount()

    /// Deliveries handled since start (whatever their outcome): an activity signal.
    public var handledCount: Int { handled.value }

    public init(consumer: any EventConsumer, bus: MessageBus, logger: Logger, maxAttempts: Int = 1,
                failures: (any EventPublisher)? = nil) {
        self.consumer = consumer
        self.bus = bus
        self.logger = logger
        self.maxAttempts = max(1, maxAttempts)
        self.failures = failures
    }

    public func run() async throws {
        try await cancelWhenGracefulShutdown {
            try await consumer.run { delivery in await handle(delivery) }
        }
    }

    /// Dispatches one delivery and decides its fate.
    public func handle(_ delivery: Delivery) async -> DeliveryOutcome {
        handled.increment()
        guard let envelope = delivery.envelope else {
            let reason = delivery.problem ?? ""  // always set when there is no envelope
            logger.error("dead-lettering a message that is not an event envelope",
                         metadata: ["amqp.routing_key": "\(delivery.routingKey)", "error": "\(reason)"])
            return .deadLetter(reason: reason)
        }
        // The event's logger, built only when something is logged.
        var eventLogger: Logger {
            var logger = self.logger
            logger[metadataKey: "amqp.routing_key"] = "\(envelope.routingKey)"
            logger[metadataKey: "bus.event_id"] = "\(envelope.eventId.lowercaseText)"
            logger[metadataKey: "bus.correlation_id"] = "\(envelope.correlationId ?? "")"
            return logger
        }
        let start = ContinuousClock.now
        let timer = timers.timer(for: envelope.routingKey)
        defer { timer.record(duration: ContinuousClock.now - start) }
        do {
            try await bus.dispatch(envelope)
            guard logger.logLevel <= .info else { return .ack }
            let elapsed = ContinuousClock.now - start
            eventLogger.info("event handled", metadata: [
                "handler.duration_ms": "\(String(format: "%.2f", Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1000))",
            ])
            return .ack
        } catch let error as BusError where error.code == .undecodable || error.code == .noHandler {
            eventLogger.error("dead-lettering an event that cannot be handled", metadata: ["error": "\(error)"])
            await reportFailure(of: envelope, reason: "\(error)")
            return .deadLetter(reason: "\(error)")
        } catch {
            eventLogger.warning("event handler failed", metadata: ["error": "\(error)", "attempt": "\(delivery.attempt)"])
            if delivery.attempt >= maxAttempts { await reportFailure(of: envelope, reason: "\(error)") }
            return .retry(reason: "\(error)")
        }
    }

    /// Raises `<service>.events.operation_failed` for the operation of `envelope` (its last
    /// attempt failed, or it can never be handled), so the client learns the outcome.
    func reportFailure(of envelope: EventEnvelope, reason: String) async {
        guard let failures, let operation = envelope.correlationId else { return }
        let failure = OperationFailure(operationId: operation, service: bus.appId, reason: String(reason.prefix(500)))
        do {
            let body = try EventJSON.encode(failure)
            try await failures.publish([EventEnvelope(
                routingKey: "\(bus.appId).events.operation_failed", correlationId: operation,
                causationId: envelope.eventId.lowercaseText, appId: bus.appId,
                traceparent: envelope.traceparent, body: body)])
            logger.error("operation failed", metadata: ["bus.correlation_id": "\(operation)", "error": "\(reason)"])
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
