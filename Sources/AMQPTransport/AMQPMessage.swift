import EventCatalog
import Foundation

/// An AMQP message with the properties the project uses, as Swift values: what is
/// published, delivered, returned or read from a queue.
struct AMQPMessage: Sendable, Equatable {
    var routingKey: String
    var body: [UInt8]
    var messageId: String?
    var type: String?
    var contentType: String?
    var correlationId: String?
    var appId: String?
    var timestamp: UInt64?
    var headers: [String: HeaderValue] = [:]
    /// 2 = persistent, 1 = transient.
    var deliveryMode: UInt8 = 2

    /// Headers the project adds when it retries or dead-letters a message.
    enum Header {
        /// The routing key the event was first published with.
        static let routingKey = "x-stega-routing-key"
        /// Which handler attempt the delivery is (1 for the first).
        static let attempt = "x-stega-attempt"
        /// The last handler error, on retried and dead-lettered messages.
        static let error = "x-stega-error"
        /// How many attempts were made, on dead-lettered messages.
        static let attempts = "x-stega-attempts"
    }

    /// The message of `envelope`.
    init(_ envelope: EventEnvelope, persistent: Bool) {
        routingKey = envelope.routingKey
        body = Array(envelope.body)
        messageId = envelope.eventId.lowercaseText
        type = envelope.type
        contentType = envelope.contentType
        correlationId = envelope.correlationId
        appId = envelope.appId
        timestamp = UInt64(min(max(0, envelope.timestamp.timeIntervalSince1970), Self.latestTimestamp))
        headers["schema_version"] = .int(Int64(envelope.schemaVersion))
        if let causation = envelope.causationId { headers["causation_id"] = .string(causation) }
        if let traceparent = envelope.traceparent { headers["traceparent"] = .string(traceparent) }
        deliveryMode = persistent ? 2 : 1
    }

    init(routingKey: String, body: [UInt8], messageId: String? = nil, type: String? = nil,
         contentType: String? = nil, correlationId: String? = nil, appId: String? = nil,
         timestamp: UInt64? = nil, headers: [String: HeaderValue] = [:], deliveryMode: UInt8 = 2) {
        self.routingKey = routingKey
        self.body = body
        self.messageId = messageId
        self.type = type
        self.contentType = contentType
        self.correlationId = correlationId
        self.appId = appId
        self.timestamp = timestamp
        self.headers = headers
        self.deliveryMode = deliveryMode
    }

    /// The routing key the event was first published with (kept across retries).
    var originalRoutingKey: String { headers[Header.routingKey]?.string ?? routingKey }

    /// The handler attempt this delivery is (a header any publisher can set: kept to 1...1,000,000).
    var attempt: Int { min(max(1, headers[Header.attempt]?.int ?? 1), 1_000_000) }

    /// 9999-12-31T23:59:59Z: a later `timestamp` is out of range (no calendar date to show).
    static let latestTimestamp: Double = 253_402_300_799

    /// The event envelope, or why the message is not one: it needs a UUID `message_id`
    /// and a `timestamp` (when given) before the year 10000.
    var envelope: Result<EventEnvelope, EnvelopeProblem> {
        guard let id = messageId.flatMap(UUID.init(text:)) else {
            return .failure(EnvelopeProblem(reason: "not an event envelope: message_id is missing or not a UUID"))
        }
        if let timestamp, Double(timestamp) > Self.latestTimestamp {
            return .failure(EnvelopeProblem(reason: "not an event envelope: timestamp \(timestamp) is after the year 9999"))
        }
        return .success(EventEnvelope(
            eventId: id, routingKey: originalRoutingKey, type: type,
            correlationId: correlationId, causationId: headers["causation_id"]?.string,
            appId: appId ?? "", timestamp: Date(timeIntervalSince1970: Double(timestamp ?? 0)),
            schemaVersion: headers["schema_version"]?.int ?? 1,
            traceparent: headers["traceparent"]?.string,
            contentType: contentType ?? "application/json", body: Data(body)))
    }

    /// Why a message is not an event envelope.
    struct EnvelopeProblem: Error {
        let reason: String
    }
}

extension Result where Failure == AMQPMessage.EnvelopeProblem {
    /// The problem's reason, or `nil` for an envelope.
    var failureReason: String? {
        if case .failure(let problem) = self { return problem.reason }
        return nil
    }
}
