import Crypto
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
    /// and answers `101` with the connection handed to what `accept` returns; with
    /// `limits.maxClients` connections open, the daemon answers `503` instead.
    public mutating func webSocket(_ pattern: String, limits: WebSocketLimits = .init(),
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
                                upgrade: WebSocketUpgrade(delegate: delegate, limits: limits))
        }
    }

    /// A write route: its requests must be `Content-Type: application/json`.
    public mutating func post(_ pattern: String, _ responder: @escaping Responder) {
        add("POST", pattern, requiresJSON: true, responder)
    }

    /// A request's route and path parameters, or the error for its route, method, token or
    /// content type.
    typealias Match = Result<(Route, [String: String]), HTTPError>

    /// Finds the route, or the error for route, method, token or content type.
    func match(method: String, path: String, contentType: String?, authorization: String? = nil) -> Match {
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

    /// The route of `request` (or its error) from its head alone, before any body is read.
    func match(_ request: HTTPRequest) -> Match {
        match(method: request.method, path: request.path, contentType: request.header("content-type"),
              authorization: request.header("authorization"))
    }

    /// Runs the matching route; never throws. Counts `http_requests_total{route,method,status}`
    /// and times `http_request_duration_seconds{route}`. `matched` is what ``match(_:)`` found
    /// for the request's head already, if it was asked.
    public func respond(to request: HTTPRequest) async -> HTTPResponse {
        await respond(to: request, matched: nil)
    }

    func respond(to request: HTTPRequest, matched: Match?) async -> HTTPResponse {
        let start = DispatchTime.now().uptimeNanoseconds
        let (response, route) = await answer(request, matched: matched ?? match(request))
        let (counter, timer) = metrics.handles(route: route, method: request.method, status: response.status)
        counter.increment()
        timer.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds - start))
        return response
    }

    private func answer(_ request: HTTPRequest, matched: Match) async -> (HTTPResponse, String) {
        let unmatched = "unmatched"
        switch matched {
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

    /// Whether `header` is `Bearer <token>` (the scheme in any case, RFC 6750 / RFC 9110
    /// §11.1). The tokens' SHA-256 digests are compared in constant time, so neither the
    /// token's bytes nor its length show in the time taken.
    static func authorized(_ header: String?, _ token: String) -> Bool {
        guard let header else { return false }
        let utf8 = Array(header.utf8)
        guard utf8.count > 7, String(decoding: utf8[0..<7], as: UTF8.self).lowercased() == "bearer " else { return false }
        let given = SHA256.hash(data: utf8[7...]), expected = SHA256.hash(data: Array(token.utf8))
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

    /// The (route, method, status) triples counted so far.
    var labelCount: Int { made.withLock { $0.count } }

    /// Methods that are counted under their own name; any other is counted as `OTHER`, so
    /// made-up methods cannot grow the metrics.
    static let knownMethods: Set<String> = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]

    func handles(route: String, method: String, status: Int) -> (Counter, Metrics.Timer) {
        let method = Self.knownMethods.contains(method) ? method : "OTHER"
        let key = Key(route: route, method: method, status: status)
        if let found = made.withLock({ $0[key] }) { return found }
        let handles = (
            Counter(label: "http_requests_total", dimensions: [("route", route), ("method", method), ("status", String(status))]),
            Metrics.Timer(label: "http_request_duration_seconds", dimensions: [("route", route)], preferredDisplayUnit: .seconds)
        )
        made.withLock { $0[key] = handles }
        return handles
    }
}
