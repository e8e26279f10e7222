/// An `<service>.events.operation_failed` event: what a worker raises when an event of an
/// operation is dead-lettered, so the client learns the outcome (see `RetryPolicy`).
public protocol OperationFailedEvent: Event {
    var failure: OperationFailure { get }
    init(_ failure: OperationFailure)
}

extension OperationFailedEvent {
    /// The payload is the failure itself, not wrapped in a `failure` key.
    public init(from decoder: any Decoder) throws { self.init(try OperationFailure(from: decoder)) }
    public func encode(to encoder: any Encoder) throws { try failure.encode(to: encoder) }
}

/// The payload of every `<service>.events.operation_failed`.
public struct OperationFailure: Codable, Sendable, Equatable {
    public var operationId: String
    public var service: String
    public var reason: String

    public init(operationId: String, service: String, reason: String) {
        self.operationId = operationId
        self.service = service
        self.reason = reason
    }

    enum CodingKeys: String, CodingKey {
        case service, reason
        case operationId = "operation_id"
    }
}
