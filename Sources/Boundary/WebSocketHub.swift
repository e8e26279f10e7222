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
public final class WebSocketHub: WebSocketDelegate {
    struct Client {
        let socket: WebSocket
        var patterns: Set<String> = []
        var operations: [String: UUID] = [:]  // operation id → tracker token
    }

    private let tracker: OperationTracker
    private let clients = Mutex<[ObjectIdentifier: Client]>([:])

    public init(tracker: OperationTracker) { self.tracker = tracker }

    /// Connected clients.
    public var count: Int { clients.withLock { $0.count } }

    /// Sends `envelope` to every client whose patterns match its routing key.
    public func broadcast(_ envelope: EventEnvelope) {
        let targets = clients.withLock { all in
            all.values.filter { client in client.patterns.contains { RoutingKey.matches(pattern: $0, key: envelope.routingKey) } }
                .map(\.socket)
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
        case (nil, .string(let pattern)?):
            guard !pattern.isEmpty, !pattern.split(separator: ".", omittingEmptySubsequences: false).contains("") else {
                return reply(socket, ["type": "error", "message": "pattern must be dot-separated words, * or #"])
            }
            clients.withLock { all in
                var client = all[ObjectIdentifier(socket)] ?? Client(socket: socket)
                if subscribing { client.patterns.insert(pattern) } else { client.patterns.remove(pattern) }
                all[ObjectIdentifier(socket)] = client
            }
            reply(socket, ["type": subscribing ? "subscribed" : "unsubscribed", "pattern": pattern])
        default:
            reply(socket, ["type": "error", "message": "give exactly one of operation or pattern"])
        }
    }

    public func closed(_ socket: WebSocket) {
        let client = clients.withLock { $0.removeValue(forKey: ObjectIdentifier(socket)) }
        for (id, token) in client?.operations ?? [:] { tracker.unsubscribe(id, token: token) }
    }

    private func subscribe(_ socket: WebSocket, operation id: String) {
        let already = clients.withLock { all -> Bool in
            let client = all[ObjectIdentifier(socket)] ?? Client(socket: socket)
            defer { all[ObjectIdentifier(socket)] = client }
            return client.operations[id] != nil
        }
        reply(socket, ["type": "subscribed", "operation": id])
        guard !already else { return }
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
