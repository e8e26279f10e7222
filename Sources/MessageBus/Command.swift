import EventCatalog
import Foundation

/// A request to change state, handled by exactly one handler (`RecordPrices`).
public protocol Command: Sendable {
    /// The command's name, for logs and `causation_id`s.
    static var name: String { get }
}

extension Command {
    public static var name: String { String(describing: Self.self) }
}

/// Where a message came from: the ids that every event it raises carries on.
public struct MessageMetadata: Sendable, Equatable {
    /// The operation id (`correlation_id`) of the workflow.
    public var correlationId: String
    /// The id of the command or event being handled; the `causation_id` of what it raises.
    public var causationId: String
    /// The W3C `traceparent`, when the request or event carried one.
    public var traceparent: String?

    public init(correlationId: String, causationId: String, traceparent: String? = nil) {
        self.correlationId = correlationId
        self.causationId = causationId
        self.traceparent = traceparent
    }

    /// Metadata for a new operation: a fresh operation id, which is also the causation id.
    public static func newOperation(traceparent: String? = nil) -> MessageMetadata {
        let id = UUID.random().lowercaseText
        return MessageMetadata(correlationId: id, causationId: id, traceparent: traceparent)
    }

    /// Metadata for handling `envelope`: same operation, caused by that event.
    public init(handling envelope: EventEnvelope) {
        self.init(correlationId: envelope.correlationId ?? envelope.eventId.lowercaseText,
                  causationId: envelope.eventId.lowercaseText,
                  traceparent: envelope.traceparent)
    }
}
