import EventCatalog
import Foundation
import HTTPServer
import Synchronization

/// `GET /ws`: clients subscribe to an operation or to a routing-key pattern and receive the
/// events as JSON.
///
/// Client → server: `{"action":"subscribe","operation":"<id>"}`,
/// `{"action":"subscribe","pattern":"returns.events.*"}`, or the same with `"unsubscribe"`.
/// Server → client: `{"type":"subscribed",…}` / `{"type":"unsubscribed",…}`,
/// `{"type":"event","routing_key","event_id","correlation_id","payload","timestamp"}` per
/// event, `{"type":"operation","operation_id","status"}` when an operation resolves (at once
/// for one already resolved), `{"type":"error","message"}` for a request it cannot follow.
///
/// Bounds (DESIGN.md, "Limits on untrusted input"): a pattern is at most 255 bytes and a client
/// holds at most ``maxSubscriptions`` patterns and operations together (`{"type":"error"}` past
/// that); matching an event against a pattern is linear in their words (``TopicPattern``), so
/// no client's subscriptions delay the others' events for long.
public final class WebSocketHub: WebSocketDelegate {
    struct Client {
        let socket: WebSocket
        var patterns: [String: TopicPattern] = [:]
        var operations: [String: UUID] = [:]  // operation id → tracker token

        var subscriptions: Int { patterns.count + operations.count }
    }

    private let tracker: OperationTracker
    private let clients = Mutex<[ObjectIdentifier: Client]>([:])
    /// Patterns and operations one client may follow at once.
    public let maxSubscriptions: Int

    public init(tracker: OperationTracker, maxSubscriptions: Int = 1_000) {
        self.tracker = tracker
        self.maxSubscriptions = maxSubscriptions
    }

    /// Connected clients.
    public var count: Int { clients.withLock { $0.count } }

    /// Sends `envelope` to every client whose patterns match its routing key.
    public func broadcast(_ envelope: EventEnvelope) {
        let words = envelope.routingKey.split(separator: ".", omittingEmptySubsequences: false)
        let targets = clients.withLock { all in
            all.values.filter { client in client.patterns.values.contains { $0.matches(words: words) } }.map(\.socket)
        }
        guard !targets.isEmpty else { return }
        let message = Self.json(EventMessage(Operation.Event(envelope)))
        for socket in targets { socket.send(message) }
    }

    public func received(_ text: String, on socket: WebSocket) {
        guard let fields = try? JSONValue.parseObject(Array(text.utf8)),
              case .string(let action)? = fields["action"], action == "subscribe" || action == "unsubscribe"
        else {
            return reply(socket, ["type": "error", "message": "expected {\"action\":\"subscribe\"|\"unsubscribe\", \"operation\" or \"pattern\"}"])
        }
        let subscribing = action == "subscribe"
        switch (fields["operation"], fields["pattern"]) {
        case (.string(let id)?, nil):
            guard UUID(uuidString: id) != nil else {
                return reply(socket, ["type": "error", "message": "operation must be a UUID, got \(id)"])
            }
            subscribing ? subscribe(socket, operation: id.lowercased()) : unsubscribe(socket, operation: id.lowercased())
        case (nil, .string(let text)?):
            let pattern: TopicPattern
            do {
                pattern = try TopicPattern(validating: text)
            } catch {
                return reply(socket, ["type": "error", "message": error.description])
            }
            let added = clients.withLock { all -> Bool in
                var client = all[ObjectIdentifier(socket)] ?? Client(socket: socket)
                defer { all[ObjectIdentifier(socket)] = client }
                guard subscribing else {
                    client.patterns[text] = nil
                    return true
                }
                guard client.patterns[text] != nil || client.subscriptions < maxSubscriptions else { return false }
                client.patterns[text] = pattern
                return true
            }
            guard added else { return tooMany(socket) }
            reply(socket, ["type": subscribing ? "subscribed" : "unsubscribed", "pattern": text])
        default:
            reply(socket, ["type": "error", "message": "give exactly one of operation or pattern"])
        }
    }

    public func closed(_ socket: WebSocket) {
        let client = clients.withLock { $0.removeValue(forKey: ObjectIdentifier(socket)) }
        for (id, token) in client?.operations ?? [:] { tracker.unsubscribe(id, token: token) }
    }

    private func tooMany(_ socket: WebSocket) {
        reply(socket, ["type": "error", "message": "at most \(maxSubscriptions) subscriptions per client"])
    }

    private func subscribe(_ socket: WebSocket, operation id: String) {
        enum Verdict { case new, already, full }
        let verdict = clients.withLock { all -> Verdict in
            let client = all[ObjectIdentifier(socket)] ?? Client(socket: socket)
            defer { all[ObjectIdentifier(socket)] = client }
            if client.operations[id] != nil { return .already }
            return client.subscriptions < maxSubscriptions ? .new : .full
        }
        if verdict == .full { return tooMany(socket) }
        reply(socket, ["type": "subscribed", "operation": id])
        guard verdict == .new else { return }
        let feed = BoundaryRoutes.Feed()
        let write: @Sendable (OperationTracker.Update) -> Void = { update in
            switch update {
            case .event(let event): socket.send(Self.json(EventMessage(event)))
            case .resolved(let status): socket.send(Self.json(OperationMessage(operationId: id, status: status)))
            }
        }
        let (snapshot, token) = tracker.subscribe(id) { feed.live($0, write) }
        clients.withLock { $0[ObjectIdentifier(socket)]?.operations[id] = token }
        var updates: [OperationTracker.Update] = snapshot?.events.map { .event($0) } ?? []
        if let status = snapshot?.status, status != .pending { updates.append(.resolved(status)) }
        feed.start(with: updates, write)
    }

    private func unsubscribe(_ socket: WebSocket, operation id: String) {
        let token = clients.withLock { $0[ObjectIdentifier(socket)]?.operations.removeValue(forKey: id) }
        if let token { tracker.unsubscribe(id, token: token) }
        reply(socket, ["type": "unsubscribed", "operation": id])
    }

    private func reply(_ socket: WebSocket, _ object: [String: String]) {
        socket.send(Self.json(object))
    }

    struct EventMessage: Encodable {
        let type = "event"
        let event: Operation.Event
        init(_ event: Operation.Event) { self.event = event }
        enum CodingKeys: String, CodingKey { case type }
        func encode(to encoder: any Encoder) throws {
            try event.encode(to: encoder)
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(type, forKey: .type)
        }
    }

    struct OperationMessage: Encodable {
        let type = "operation"
        let operationId: String
        let status: Operation.Status
        enum CodingKeys: String, CodingKey { case type, status, operationId = "operation_id" }
    }

    static func json<T: Encodable>(_ value: T) -> String { BoundaryRoutes.json(value) }
}
