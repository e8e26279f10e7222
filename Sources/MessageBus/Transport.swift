import EventCatalog

/// Sends events to the broker (or to an in-memory exchange in tests).
public protocol EventPublisher: Sendable {
    /// Publishes `envelopes` in order; returns once the transport took responsibility for them.
    func publish(_ envelopes: [EventEnvelope]) async throws
}

/// One message handed to a consumer's handler.
public struct Delivery: Sendable {
    /// The event, or `nil` when the message is not a well-formed event envelope.
    public let envelope: EventEnvelope?
    /// Why `envelope` is `nil`, for the dead-letter reason.
    public let problem: String?
    /// The routing key the event was first published with (kept across retries).
    public let routingKey: String
    /// The raw body.
    public let body: [UInt8]
    /// Whether the broker delivered this very message before (a crash or a nack).
    public let redelivered: Bool
    /// Which handler attempt this is: 1 at first, then one more per retry.
    public let attempt: Int

    public init(envelope: EventEnvelope?, problem: String? = nil, routingKey: String, body: [UInt8],
                redelivered: Bool, attempt: Int = 1) {
        self.envelope = envelope
        self.problem = envelope == nil ? problem ?? "not an event envelope" : nil
        self.routingKey = routingKey
        self.body = body
        self.redelivered = redelivered
        self.attempt = attempt
    }
}

/// What a consumer does with a delivery once the handler has run.
public enum DeliveryOutcome: Sendable, Equatable {
    /// Done: acknowledge.
    case ack
    /// Failed, worth another try: the transport retries it after a back-off, up to its
    /// attempt limit, then dead-letters it with `reason`.
    case retry(reason: String)
    /// Failed for good (undecodable, unknown type): dead-letter it at once.
    case deadLetter(reason: String)
}

/// The handler a consumer calls for each delivery.
public typealias DeliveryHandler = @Sendable (Delivery) async -> DeliveryOutcome

/// The handler a consumer calls with the deliveries at hand, in delivery order: one outcome
/// per delivery, in the same order.
public typealias DeliveryBatchHandler = @Sendable ([Delivery]) async -> [DeliveryOutcome]

/// Receives the events bound to a queue and hands them to a handler.
public protocol EventConsumer: Sendable {
    /// Whether the consumer's queue exists and is bound (a publish now reaches it).
    var isReady: Bool { get }

    /// Consumes until the task is cancelled, calling `handler` with what has arrived (at
    /// least one delivery, at most the consumer's batch size; one batch at a time, in
    /// delivery order) and settling each delivery as its outcome says.
    func run(batchHandler handler: @escaping DeliveryBatchHandler) async throws
}

extension EventConsumer {
    /// Consumes until the task is cancelled, calling `handler` for each delivery in order.
    public func run(handler: @escaping DeliveryHandler) async throws {
        try await run(batchHandler: { deliveries in
            var outcomes: [DeliveryOutcome] = []
            outcomes.reserveCapacity(deliveries.count)
            for delivery in deliveries { outcomes.append(await handler(delivery)) }
            return outcomes
        })
    }
}
