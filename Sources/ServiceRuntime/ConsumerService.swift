import EventCatalog
import Foundation
import Logging
import MessageBus
import ServiceLifecycle

/// Runs a consumer and dispatches every delivery through the service's bus.
///
/// A handler that returns acks. An undecodable message, or one no handler knows, is
/// rejected at once; a failing handler's message is retried once by redelivery and then
/// rejected. On graceful shutdown the consumer stops taking deliveries, finishes and
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
            logger.error("rejected a message that is not an event envelope (no UUID message_id)",
                         metadata: ["amqp.routing_key": "\(delivery.routingKey)"])
            return .reject
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
            logger.error("rejected an event that cannot be handled", metadata: ["error": "\(error)"])
            return .reject
        } catch {
            if delivery.redelivered {
                logger.error("event failed again; rejecting it", metadata: ["error": "\(error)"])
                return .reject
            }
            logger.warning("event failed; it will be redelivered", metadata: ["error": "\(error)"])
            return .retry
        }
    }
}
