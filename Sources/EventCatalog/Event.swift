import Foundation

/// An event of the stega catalog: a `Codable` value with a static, unique routing key.
///
/// ```swift
/// struct PricesRecorded: Event {
///     static let routingKey = "returns.events.prices_recorded"
///     var symbol: String
/// }
/// ```
/// A routing key never changes. A breaking change to an event is a new event or a new
/// `schemaVersion`, and readers accept the versions they know.
public protocol Event: Codable, Sendable, Equatable {
    /// `<service>.events.<event_name>`, unique in the catalog.
    static var routingKey: String { get }
    /// The version of the payload schema, sent in the `schema_version` header.
    static var schemaVersion: Int { get }
    /// Throws ``InvalidEvent`` when a decoded payload breaks the rules of its input (a window
    /// out of range, a bad symbol, a non-finite number): consumers call it before any handler.
    func validate() throws
}

extension Event {
    public static var schemaVersion: Int { 1 }

    /// No rules beyond the payload's types.
    public func validate() throws {}

    /// The event name: the last component of the routing key (`prices_recorded`).
    public static var eventName: String { RoutingKey.eventName(of: routingKey) }

    /// The service that owns the event: the first component of the routing key (`returns`).
    public static var service: String { RoutingKey.service(of: routingKey) }
}

/// Helpers on routing keys of the form `<service>.events.<event_name>`.
public enum RoutingKey {
    /// The last dot-separated word of `key`.
    public static func eventName(of key: String) -> String {
        // Not `split`: this runs for every event raised, and an array of parts is not needed.
        guard let dot = key.utf8.lastIndex(of: UInt8(ascii: ".")) else { return key }
        return String(key[key.utf8.index(after: dot)...])
    }

    /// The first dot-separated word of `key`.
    public static func service(of key: String) -> String {
        guard let dot = key.utf8.firstIndex(of: UInt8(ascii: ".")) else { return key }
        return String(key[..<dot])
    }
}

extension RoutingKey {
    /// Whether `key` matches the topic `pattern` (`*` one word, `#` zero or more words); an
    /// invalid pattern (see ``TopicPattern``) matches nothing.
    public static func matches(pattern: String, key: String) -> Bool {
        TopicPattern(pattern)?.matches(key) ?? false
    }
}
