import EventCatalog
import Foundation
import Synchronization

/// What a handler gets besides its message: the metadata and a place to raise events.
///
/// A handler raises events with ``raise(_:)`` inside its store's write, which stores
/// ``takeRaised()`` in the same transaction as the state change (the outbox): that is the only
/// way events leave a handler. An event raised and not stored makes the bus fail the message
/// (``BusError/eventsNotStored``), and so does an event the handler did not declare when it
/// was registered (``BusError/undeclaredEvent``).
public final class HandlerContext: Sendable {
    /// The ids of the message being handled.
    public let metadata: MessageMetadata
    /// The service that raises events here (`app_id`).
    public let appId: String
    /// The id of the event being handled, when it is an event (for the inbox).
    public let handledEventId: UUID?
    /// The routing keys the handler declared it raises; `nil`: any.
    private let declared: Set<String>?
    private let raised = Mutex<[EventEnvelope]>([])

    public init(metadata: MessageMetadata, appId: String, handledEventId: UUID? = nil, declared: Set<String>? = nil) {
        self.metadata = metadata
        self.appId = appId
        self.handledEventId = handledEventId
        self.declared = declared
    }

    /// Raises `event` with this context's ids; returns its envelope. Throws
    /// ``BusError/undeclaredEvent`` when the handler did not declare `E`.
    @discardableResult
    public func raise<E: Event>(_ event: E) throws -> EventEnvelope {
        if let declared, !declared.contains(E.routingKey) {
            throw BusError(.undeclaredEvent, "\(E.routingKey) was raised by a handler that does not declare it")
        }
        let envelope = try EventEnvelope(
            event, appId: appId, correlationId: metadata.correlationId,
            causationId: metadata.causationId, traceparent: metadata.traceparent)
        raised.withLock { $0.append(envelope) }
        return envelope
    }

    /// Removes and returns the events raised so far (the store's write calls it).
    public func takeRaised() -> [EventEnvelope] {
        raised.withLock { list in
            defer { list.removeAll() }
            return list
        }
    }

    /// Throws ``BusError/eventsNotStored`` when events raised here were not taken by a store's
    /// write (the handler of `message` broke the rule above).
    func checkStored(_ message: String) throws {
        let left = takeRaised()
        guard !left.isEmpty else { return }
        throw BusError(.eventsNotStored, "the handler of \(message) raised \(left.map(\.routingKey)) without storing "
                       + "them: a handler raises events inside its store's write, which stores them in its transaction")
    }
}
