import EventCatalog
import Foundation
import Synchronization

/// What a handler gets besides its message: the metadata and a place to raise events.
///
/// A handler that keeps state calls ``raise(_:)`` and then stores ``takeRaised()`` in the
/// same transaction as its state change (the outbox). Whatever is raised and not taken is
/// forwarded by the bus to its publisher after the handler returns.
public final class HandlerContext: Sendable {
    /// The ids of the message being handled.
    public let metadata: MessageMetadata
    /// The service that raises events here (`app_id`).
    public let appId: String
    /// The id of the event being handled, when it is an event (for the inbox).
    public let handledEventId: UUID?
    private let raised = Mutex<[EventEnvelope]>([])

    public init(metadata: MessageMetadata, appId: String, handledEventId: UUID? = nil) {
        self.metadata = metadata
        self.appId = appId
        self.handledEventId = handledEventId
    }

    /// Raises `event` with this context's ids; returns its envelope.
    @discardableResult
    public func raise<E: Event>(_ event: E) throws -> EventEnvelope {
        let envelope = try EventEnvelope(
            event, appId: appId, correlationId: metadata.correlationId,
            causationId: metadata.causationId, traceparent: metadata.traceparent)
        raised.withLock { $0.append(envelope) }
        return envelope
    }

    /// Removes and returns the events raised so far.
    public func takeRaised() -> [EventEnvelope] {
        raised.withLock { list in
            defer { list.removeAll() }
            return list
        }
    }
}
