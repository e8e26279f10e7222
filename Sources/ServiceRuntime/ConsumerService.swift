import EventCatalog
import Foundation
import Logging
import MessageBus
import ServiceLifecycle

/// Runs a consumer and dispatches every delivery through the service's bus.
///
/// A handler that returns acks. An undecodable message, or one no handler knows, is
/// dead-lettered at once; a failing handler's message is retried by the transport with
/// back-off, then dead-lettered. On graceful shutdown the consumer stops taking deliveries, finishes and
/// settles the one in hand, and closes.
public struct ConsumerService: Service {
    let consumer: any EventConsumer
    let bus: MessageBus
    let logger: Logger

    public init(consumer: any EventConsumer, bus: MessageBus, logger: Logger) {
        self.consumer = consumer
        self.bus = bus
        self.logger = logger
    }

    public func run() async throws {
        try await cancelWhenGracefulShutdown {
            try await consumer.run { delivery in await handle(delivery) }
        }
    }

    /// Dispatches one delivery and decides its fate.
    public func handle(_ delivery: Delivery) async -> DeliveryOutcome {
        guard let envelope = delivery.envelope else {
            logger.error("dead-lettering a message that is not an event envelope (no UUID message_id)",
                         metadata: ["amqp.routing_key": "\(delivery.routingKey)"])
            return .deadLetter(reason: "not an event envelope: message_id is missing or not a UUID")
        }
        var logger = self.logger
        logger[metadataKey: "amqp.routing_key"] = "\(envelope.routingKey)"
        logger[metadataKey: "bus.event_id"] = "\(envelope.eventId.uuidString.lowercased())"
        logger[metadataKey: "bus.correlation_id"] = "\(envelope.correlationId ?? "")"
        let start = ContinuousClock.now
        do {
            try await bus.dispatch(envelope)
            let elapsed = ContinuousClock.now - start
            logger.info("event handled", metadata: [
                "handler.duration_ms": "\(String(format: "%.2f", Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1000))",
            ])
            return .ack
        } catch let error as BusError where error.code == .undecodable || error.code == .noHandler {
            logger.error("dead-lettering an event that cannot be handled", metadata: ["error": "\(error)"])
            return .deadLetter(reason: "\(error)")
        } catch {
            logger.warning("event handler failed", metadata: ["error": "\(error)", "attempt": "\(delivery.attempt)"])
            return .retry(reason: "\(error)")
        }
    }
}
