import Foundation
import HTTPServer
import ServiceRuntime
import Synchronization

/// The boundary's REST API: `GET /operations/{id}`.
public struct BoundaryRoutes: Sendable {
    let tracker: OperationTracker

    public init(tracker: OperationTracker) { self.tracker = tracker }

    /// The boundary's OpenAPI 3.1 document.
    public static var openAPIDocument: [UInt8] {
        OpenAPIRoute.load(Bundle.module.url(forResource: "openapi", withExtension: "json"))
    }

    public func add(to router: inout Router) {
        router.get("/operations/{id}") { request in
            let id = try Self.operationId(request)
            guard let operation = tracker.operation(id) else {
                throw HTTPError(404, "unknown_operation", "no event has been seen for operation \(id)")
            }
            return try .json(operation)
        }
        router.get("/operations/{id}/events") { request in try events(request) }
    }

    static func operationId(_ request: HTTPRequest) throws -> String {
        let id = request.parameters["id"] ?? ""
        guard UUID(uuidString: id) != nil else {
            throw HTTPError(400, "invalid_operation_id", "operation id must be a UUID, got \(id)")
        }
        return id.lowercased()
    }

    /// `GET /operations/{id}/events`: Server-Sent Events — `event: <routing_key>` /
    /// `data: <event JSON>` for each event (those seen so far first), then
    /// `event: operation` / `data: {"operation_id","status"}`, and the stream ends.
    /// 404 when the operation was never seen.
    func events(_ request: HTTPRequest) throws -> HTTPResponse {
        let id = try Self.operationId(request)
        let stream = ResponseStream()
        let feed = Feed()
        let write: @Sendable (OperationTracker.Update) -> Void = { update in
            switch update {
            case .event(let event):
                stream.write("event: \(event.routingKey)\ndata: \(Self.json(event))\n\n")
            case .resolved(let status):
                stream.write("event: operation\ndata: \(Self.json(OutcomeBody(operationId: id, status: status)))\n\n")
                stream.finish()
            }
        }
        // Live updates wait until the snapshot is written, so the stream keeps the order.
        let (snapshot, token) = tracker.subscribe(id) { update in feed.live(update, write) }
        guard let operation = snapshot else {
            tracker.unsubscribe(id, token: token)
            throw HTTPError(404, "unknown_operation", "no event has been seen for operation \(id)")
        }
        stream.onClose { tracker.unsubscribe(id, token: token) }
        feed.start(with: operation.events.map { .event($0) } + (operation.status == .pending ? [] : [.resolved(operation.status)]),
                   write)
        return HTTPResponse(status: 200, headers: ["Content-Type": "text/event-stream", "Cache-Control": "no-cache"],
                            stream: stream)
    }

    /// Orders the snapshot before live updates and drops events sent twice.
    final class Feed: Sendable {
        struct State {
            var started = false
            var queued: [OperationTracker.Update] = []
            var sent: Set<String> = []
            var resolved = false
        }
        let state = Mutex(State())

        func live(_ update: OperationTracker.Update, _ write: (OperationTracker.Update) -> Void) {
            let now = state.withLock { s -> Bool in
                if !s.started { s.queued.append(update) }
                return s.started
            }
            if now { deliver([update], write) }
        }

        func start(with snapshot: [OperationTracker.Update], _ write: (OperationTracker.Update) -> Void) {
            deliver(snapshot, write)
            let queued = state.withLock { s -> [OperationTracker.Update] in
                s.started = true
                defer { s.queued.removeAll() }
                return s.queued
            }
            deliver(queued, write)
        }

        private func deliver(_ updates: [OperationTracker.Update], _ write: (OperationTracker.Update) -> Void) {
            for update in updates {
                let fresh = state.withLock { s -> Bool in
                    switch update {
                    case .event(let e): return !s.resolved && s.sent.insert(e.eventId).inserted
                    case .resolved: defer { s.resolved = true }; return !s.resolved
                    }
                }
                if fresh { write(update) }
            }
        }
    }

    struct OutcomeBody: Encodable {
        let operationId: String
        let status: Operation.Status
        enum CodingKeys: String, CodingKey { case status, operationId = "operation_id" }
    }

    static func json<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }
}
