import EventCatalog
import Foundation
import Logging
import Synchronization

/// A service's internal message bus: dispatches commands and events to their handlers,
/// collects the events they raise and forwards them to a publisher.
///
/// A command's error reaches the caller. An event may have many handlers; a failing one
/// is logged and counted while the others run, and ``dispatch(_:)`` then throws so the
/// consumer can retry.
public final class MessageBus: Sendable {
    /// The service name, used as `app_id` of raised events.
    public let appId: String
    private let registry: HandlerRegistry
    private let publisher: any EventPublisher
    private let logger: Logger
    private let failures = Atomic<Int>(0)

    public init(appId: String, registry: HandlerRegistry, publisher: any EventPublisher,
                logger: Logger = Logger(label: "stega.bus")) {
        self.appId = appId
        self.registry = registry
        self.publisher = publisher
        self.logger = logger
    }

    /// Routing keys with at least one event handler.
    public var routingKeys: [String] { registry.routingKeys }

    /// How many event handler calls have failed since start.
    public var handlerFailures: Int { failures.load(ordering: .relaxed) }

    /// Runs the one handler of `command`, then forwards the events it raised and did not store.
    public func send<C: Command>(_ command: C, metadata: MessageMetadata) async throws {
        guard let handler = registry.commandHandlers[ObjectIdentifier(C.self)] else {
            throw BusError(.noHandler, "no handler for command \(C.name)")
        }
        let context = HandlerContext(metadata: metadata, appId: appId)
        try await handler(command, context)
        try await forward(context)
    }

    /// Runs every handler of `envelope`'s routing key; throws when none exists, when the
    /// event cannot be decoded, or when any handler failed (after all of them ran).
    public func dispatch(_ envelope: EventEnvelope) async throws {
        guard let handlers = registry.eventHandlers[envelope.routingKey], !handlers.isEmpty else {
            throw BusError(.noHandler, "no handler for routing key \(envelope.routingKey)")
        }
        var firstError: (any Error)?
        for handler in handlers {
            let context = HandlerContext(metadata: MessageMetadata(handling: envelope),
                                         appId: appId, handledEventId: envelope.eventId)
            do {
                try await handler(envelope, context)
                try await forward(context)
            } catch let error as BusError where error.code == .undecodable {
                throw error
            } catch {
                failures.add(1, ordering: .relaxed)
                // Metadata built only here, off the path of events that succeed.
                logger.error("event handler failed", metadata: [
                    "amqp.routing_key": "\(envelope.routingKey)",
                    "bus.event_id": "\(envelope.eventId.lowercaseText)",
                    "bus.correlation_id": "\(envelope.correlationId ?? "")",
                    "error": "\(error)",
                ])
                if firstError == nil { firstError = error }
            }
        }
        if let firstError {
            throw BusError(.handlersFailed, "\(firstError)")
        }
    }

    private func forward(_ context: HandlerContext) async throws {
        let raised = context.takeRaised()
        if !raised.isEmpty {
            try await publisher.publish(raised)
        }
    }
}
