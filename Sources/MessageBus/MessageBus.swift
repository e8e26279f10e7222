import EventCatalog
import Foundation
import Logging
import Synchronization

/// A service's internal message bus: dispatches commands and events to their handlers.
///
/// Handlers store the events they raise in the transaction of their write (see
/// ``HandlerContext``); the bus only checks that they did: an event raised and not stored, or
/// not declared, fails the message. A command's error reaches the caller. An event may have
/// many handlers; a failing one is logged and counted while the others run, and
/// ``dispatch(_:)`` then throws so the consumer can retry.
public final class MessageBus: Sendable {
    /// The service name, used as `app_id` of raised events.
    public let appId: String
    private let registry: HandlerRegistry
    private let logger: Logger
    private let failures = Atomic<Int>(0)

    public init(appId: String, registry: HandlerRegistry, logger: Logger = Logger(label: "stega.bus")) {
        self.appId = appId
        self.registry = registry
        self.logger = logger
    }

    /// Routing keys with at least one event handler.
    public var routingKeys: [String] { registry.routingKeys }

    /// Routing keys the handlers declare they raise.
    public var raisedRoutingKeys: [String] { registry.raisedRoutingKeys }

    /// How many event handler calls have failed since start.
    public var handlerFailures: Int { failures.load(ordering: .relaxed) }

    /// Runs the one handler of `command`.
    public func send<C: Command>(_ command: C, metadata: MessageMetadata) async throws {
        guard let registered = registry.commandHandlers[ObjectIdentifier(C.self)] else {
            throw BusError(.noHandler, "no handler for command \(C.name)")
        }
        let context = HandlerContext(metadata: metadata, appId: appId, declared: registered.raises)
        try await registered.handler(command, context)
        try Self.checkStored(context, C.name)
    }

    /// Runs every handler of `envelope`'s routing key; throws when none exists, when the
    /// event cannot be decoded, or when any handler failed (after all of them ran).
    public func dispatch(_ envelope: EventEnvelope) async throws {
        guard let handlers = registry.eventHandlers[envelope.routingKey], !handlers.isEmpty else {
            throw BusError(.noHandler, "no handler for routing key \(envelope.routingKey)")
        }
        var firstError: (any Error)?
        for registered in handlers {
            let context = HandlerContext(metadata: MessageMetadata(handling: envelope), appId: appId,
                                         handledEventId: envelope.eventId, declared: registered.raises)
            do {
                try await registered.handler(envelope, context)
                try Self.checkStored(context, envelope.routingKey)
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

    /// Throws when the handler of `message` raised events it did not store.
    private static func checkStored(_ context: HandlerContext, _ message: String) throws {
        let left = context.takeRaised()
        guard !left.isEmpty else { return }
        throw BusError(.eventsNotStored, "the handler of \(message) raised \(left.map(\.routingKey)) without storing "
                       + "them: a handler raises events inside its store's write, which stores them in its transaction")
    }
}
