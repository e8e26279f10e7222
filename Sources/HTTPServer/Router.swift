import Foundation
import Logging
import Metrics
import Synchronization

/// A request handler.
public typealias Responder = @Sendable (HTTPRequest) async throws -> HTTPResponse

/// Routes requests by method and path pattern (`/returns/{symbol}/summary`).
///
/// Faults are reported in DESIGN.md's order: route (404), method (405), content type of a
/// write (415), size (413); the handler then reports body (400) and values (422).
///
/// ```swift
/// var router = Router()
/// router.get("/prices/{symbol}") { request in ... }
/// router.post("/prices") { request in ... }   // requires Content-Type: application/json
/// let response = await router.respond(to: request)
/// ```
public struct Router: Sendable {
    struct Route: Sendable {
        let method: String
        let pattern: String
        let segments: [Segment]
        let requiresJSON: Bool
        let responder: Responder
    }

    enum Segment: Sendable, Equatable {
        case literal(String)
        case parameter(String)
    }

    private(set) var routes: [Route] = []
    private let logger: Logger
    private let metrics = RequestMetrics()
    /// When set, write routes need `Authorization: Bearer <token>` (401 `unauthorized` otherwise).
    public var writeToken: String?

    public init(logger: Logger = Logger(label: "stega.http")) {
        self.logger = logger
    }

    /// Every route as `METHOD /pattern`.
    public var routeList: [String] { routes.map { "\($0.method) \($0.pattern)" } }

    public mutating func add(_ method: String, _ pattern: String, requiresJSON: Bool, _ responder: @escaping Responder) {
        let segments = pattern.split(separator: "/").map { part -> Segment in
            if part.hasPrefix("{"), part.hasSuffix("}") { return .parameter(String(part.dropFirst().dropLast())) }
            return .literal(String(part))
        }
        routes.append(Route(method: method, pattern: pattern, segments: segments,
                            requiresJSON: requiresJSON, responder: responder))
    }

    public mutating func get(_ pattern: String, _ responder: @escaping Responder) {
        add("GET", pattern, requiresJSON: false, responder)
    }

    /// A WebSocket endpoint: checks the RFC 6455 handshake (400 `invalid_upgrade` otherwise)
    /// and answers `101` with the connection handed to what `accept` returns.
    public mutating func webSocket(_ pattern: String, sendLimit: Int = 1 << 20,
                                   _ accept: @escaping @Sendable (HTTPRequest) throws -> any WebSocketDelegate) {
        get(pattern) { request in
            guard request.header("upgrade")?.lowercased() == "websocket",
                  request.header("connection")?.lowercased().contains("upgrade") == true,
                  request.header("sec-websocket-version") == "13",
                  let key = request.header("sec-websocket-key"), Data(base64Encoded: key)?.count == 16
            else {
                throw HTTPError(400, "invalid_upgrade", "expected a WebSocket (RFC 6455, version 13) handshake")
            }
            let delegate = try accept(request)
            return HTTPResponse(status: 101, headers: ["Upgrade": "websocket",
                                                       "Sec-WebSocket-Accept": WebSocket.acceptKey(for: key)],
                                upgrade: WebSocketUpgrade(delegate: delegate, sendLimit: sendLimit))
        }
    }

    /// A write route: its requests must be `Content-Type: application/json`.
    public mutating func post(_ pattern: String, _ responder: @escaping Responder) {
        add("POST", pattern, requiresJSON: true, responder)
    }

    /// Finds the route, or the error for route, method or content type.
    func match(method: String, path: String, contentType: String?,
               authorization: String? = nil) -> Result<(Route, [String: String]), HTTPError> {
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        var allowed: [String] = []
        for route in routes {
            guard let parameters = Self.bind(route.segments, parts) else { continue }
            let sameMethod = route.method == method || (method == "HEAD" && route.method == "GET")
            guard sameMethod else {
                allowed.append(route.method)
                continue
            }
            if route.requiresJSON, let token = writeToken, !Self.authorized(authorization, token) {
                return .failure(HTTPError(401, "unauthorized", "this write needs Authorization: Bearer <token>",
                                          headers: ["WWW-Authenticate": "Bearer"]))
            }
            if route.requiresJSON, !Self.isJSON(contentType) {
                return .failure(HTTPError(415, "unsupported_media_type",
                                          "Content-Type must be application/json"))
            }
            return .success((route, parameters))
        }
        if allowed.isEmpty { return .failure(.notFound("no route for \(path)")) }
        return .failure(HTTPError(405, "method_not_allowed", "\(method) is not allowed on \(path)",
                                  headers: ["Allow": Array(Set(allowed)).sorted().joined(separator: ", ")]))
    }

    /// The route, method or content-type error of a request, if any (before its body is read).
    public func precheck(method: String, path: String, contentType: String?, authorization: String? = nil) -> HTTPError? {
        if case .failure(let error) = match(method: method, path: path, contentType: contentType,
                                            authorization: authorization) { return error }
        return nil
    }

    /// Runs the matching route; never throws. Counts `http_requests_total{route,method,status}`
    /// and times `http_request_duration_seconds{route}`.
    public func respond(to request: HTTPRequest) async -> HTTPResponse {
        let start = DispatchTime.now().uptimeNanoseconds
        let (response, route) = await answer(request)
        let (counter, timer) = metrics.handles(route: route, method: request.method, status: response.status)
        counter.increment()
        timer.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds - start))
        return response
    }

    private func answer(_ request: HTTPRequest) async -> (HTTPResponse, String) {
        let unmatched = "unmatched"
        switch match(method: request.method, path: request.path, contentType: request.header("content-type"),
                     authorization: request.header("authorization")) {
        case .failure(let error):
            return (.error(error), unmatched)
        case .success(let (route, parameters)):
            if request.bodyTooLarge {
                return (.error(HTTPError(413, "payload_too_large", "the request body is over the limit")), route.pattern)
            }
            var request = request
            request.parameters = parameters
            do {
                return (try await route.responder(request), route.pattern)
            } catch let error as HTTPError {
                return (.error(error), route.pattern)
            } catch {
                logger.error("handler failed", metadata: [
                    "http.request.method": "\(request.method)", "http.route": "\(route.pattern)",
                    "error": "\(error)",
                ])
                return (.error(HTTPError(500, "internal_error", "internal error")), route.pattern)
            }
        }
    }

    static func bind(_ segments: [Segment], _ parts: [String]) -> [String: String]? {
        guard segments.count == parts.count else { return nil }
        var parameters: [String: String] = [:]
        for (segment, part) in zip(segments, parts) {
            switch segment {
            case .literal(let text): if text != part { return nil }
            case .parameter(let name): parameters[name] = part.removingPercentEncoding ?? part
            }
        }
        return parameters
    }

    /// Compares `Bearer <token>` in constant time (for equal lengths).
    static func authorized(_ header: String?, _ token: String) -> Bool {
        guard let header, header.hasPrefix("Bearer ") else { return false }
        let given = Array(header.dropFirst(7).utf8), expected = Array(token.utf8)
        guard given.count == expected.count else { return false }
        return zip(given, expected).reduce(0) { $0 | ($1.0 ^ $1.1) } == 0
    }

    static func isJSON(_ contentType: String?) -> Bool {
        guard let contentType else { return false }
        if contentType == "application/json" { return true }  // the common case, without allocating
        let mediaType = contentType.split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased()
        return mediaType == "application/json"
    }
}

/// The counter and timer of each (route, method, status), made once: making them through the
/// metrics factory on every request (label checks, the registry's lock and lookups) showed
/// in returns-api's profile.
final class RequestMetrics: Sendable {
    private struct Key: Hashable {
        let route: String
        let method: String
        let status: Int
    }

    private let made = Mutex<[Key: (Counter, Metrics.Timer)]>([:])

    func handles(route: String, method: String, status: Int) -> (Counter, Metrics.Timer) {
        let key = Key(route: route, method: method, status: status)
        if let found = made.withLock({ $0[key] }) { return found }
        let handles = (
            Counter(label: "http_requests_total", dimensions: [("route", route), ("method", method), ("status", String(status))]),
            Metrics.Timer(label: "http_request_duration_seconds", dimensions: [("route", route)], preferredDisplayUnit: .seconds)
        )
        // Methods and routes come from requests: a client sending many made-up methods would
        // grow this, so beyond a bound the handles are made each time, as before.
        made.withLock { if $0.count < 1_000 { $0[key] = handles } }
        return handles
    }
}
