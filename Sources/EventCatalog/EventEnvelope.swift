import Foundation

/// One event as it travels: the JSON body and the AMQP properties of DESIGN.md.
///
/// ```swift
/// let envelope = try EventEnvelope(PricesRecorded(...), appId: "returns",
///                                  correlationId: operationId, causationId: commandId)
/// let event = try envelope.decode(PricesRecorded.self)
/// ```
public struct EventEnvelope: Sendable, Equatable {
    /// `message_id`: the event id.
    public var eventId: UUID
    /// The routing key (`returns.events.prices_recorded`).
    public var routingKey: String
    /// `type`: the event name (`prices_recorded`).
    public var type: String
    /// `correlation_id`: the operation id that started the workflow.
    public var correlationId: String?
    /// Header `causation_id`: the event or command that caused this one.
    public var causationId: String?
    /// `app_id`: the producing service (`returns`).
    public var appId: String
    /// `timestamp`, whole seconds since the epoch on the wire.
    public var timestamp: Date
    /// Header `schema_version`.
    public var schemaVersion: Int
    /// Header `traceparent` (W3C), when known.
    public var traceparent: String?
    /// `content_type`; `application/json` for every catalog event.
    public var contentType: String
    /// The event's JSON.
    public var body: Data

    public init(eventId: UUID = UUID.random(), routingKey: String, type: String? = nil,
                correlationId: String? = nil, causationId: String? = nil, appId: String,
                timestamp: Date = Date(), schemaVersion: Int = 1, traceparent: String? = nil,
                contentType: String = "application/json", body: Data) {
        self.eventId = eventId
        self.routingKey = routingKey
        self.type = type ?? RoutingKey.eventName(of: routingKey)
        self.correlationId = correlationId
        self.causationId = causationId
        self.appId = appId
        self.timestamp = Date(timeIntervalSince1970: timestamp.timeIntervalSince1970.rounded(.down))
        self.schemaVersion = schemaVersion
        self.traceparent = traceparent
        self.contentType = contentType
        self.body = body
    }

    /// Wraps `event`, encoding it as JSON.
    public init<E: Event>(_ event: E, eventId: UUID = UUID.random(), appId: String? = nil,
                          correlationId: String? = nil, causationId: String? = nil,
                          traceparent: String? = nil, timestamp: Date = Date()) throws {
        self.init(eventId: eventId, routingKey: E.routingKey, type: E.eventName,
                  correlationId: correlationId, causationId: causationId,
                  appId: appId ?? E.service, timestamp: timestamp,
                  schemaVersion: E.schemaVersion, traceparent: traceparent,
                  body: try EventJSON.encode(event))
    }

    /// Decodes the body as `E`; throws when the routing key is not `E`'s or the JSON does not fit.
    public func decode<E: Event>(_ type: E.Type) throws -> E {
        guard routingKey == E.routingKey else {
            throw CatalogError.routingKeyMismatch(expected: E.routingKey, actual: routingKey)
        }
        return try EventJSON.decode(E.self, from: body)
    }
}

/// The one JSON coding of events: keys as declared (snake_case), sorted for stable bytes.
public enum EventJSON {
    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        if let writable = value as? any EventJSONWritable {
            var writer = EventJSONWriter()
            writable.writeJSON(to: &writer)
            if !writer.isInvalid { return Data(writer.bytes) }
        }
        return try encodeWithFoundation(value)
    }

    /// The same with `JSONEncoder` alone: the reference ``EventJSONWritable`` types match.
    public static func encodeWithFoundation<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(value)
    }

    public static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        try decoder.decode(T.self, from: data)
    }

    // One decoder for every event: it is not configured after this, and decoding is safe from
    // any thread.
    private static let decoder = JSONDecoder()
}

/// Errors of the event catalog.
public struct CatalogError: Error, CustomStringConvertible, Equatable {
    public let message: String

    public static func routingKeyMismatch(expected: String, actual: String) -> CatalogError {
        CatalogError(message: "expected routing key \(expected), got \(actual)")
    }

    public static func unknownRoutingKey(_ key: String) -> CatalogError {
        CatalogError(message: "unknown routing key \(key)")
    }

    public var description: String { message }
}
