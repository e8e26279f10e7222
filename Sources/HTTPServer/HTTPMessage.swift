import Foundation

/// A request as handlers see it: copied out of libmicrohttpd, safe to keep.
public struct HTTPRequest: Sendable {
    /// `GET`, `POST`, …
    public var method: String
    /// The path, without the query string (`/prices/AAPL`).
    public var path: String
    /// Query arguments, URL-decoded (`from`, `to`, …); the last one wins when repeated.
    public var query: [String: String]
    /// Header fields, names lowercased.
    public var headers: [String: String]
    /// The body (empty when it was over the limit; see `bodyTooLarge`).
    public var body: [UInt8]
    /// Whether the body was larger than the server's limit.
    public var bodyTooLarge: Bool
    /// Path parameters of the matched route (`symbol` for `/prices/{symbol}`).
    public var parameters: [String: String]

    public init(method: String, path: String, query: [String: String] = [:], headers: [String: String] = [:],
                body: [UInt8] = [], bodyTooLarge: Bool = false, parameters: [String: String] = [:]) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.bodyTooLarge = bodyTooLarge
        self.parameters = parameters
    }

    /// The header `name` (case-insensitive).
    public func header(_ name: String) -> String? { headers[name.lowercased()] }
}

/// The delegate of a WebSocket connection an upgrade response hands over.
public struct WebSocketUpgrade: Sendable, Equatable {
    public let delegate: any WebSocketDelegate
    public let limits: WebSocketLimits
    let id = UUIDBox()

    public init(delegate: any WebSocketDelegate, limits: WebSocketLimits = .init()) {
        self.delegate = delegate
        self.limits = limits
    }

    public static func == (lhs: WebSocketUpgrade, rhs: WebSocketUpgrade) -> Bool { lhs.id === rhs.id }

    final class UUIDBox: Sendable {}
}

/// A response: status, headers and body bytes.
public struct HTTPResponse: Sendable, Equatable {
    public var status: Int
    public var headers: [String: String]
    public var body: [UInt8]
    /// A body written over time instead of `body` (Server-Sent Events).
    public var stream: ResponseStream?
    /// For a `101` upgrade: who takes the WebSocket connection.
    public var upgrade: WebSocketUpgrade?
    /// A body made as it is sent instead of `body` (a large document).
    public var generated: GeneratedBody?

    public init(status: Int, headers: [String: String] = [:], body: [UInt8] = [], stream: ResponseStream? = nil,
                upgrade: WebSocketUpgrade? = nil, generated: GeneratedBody? = nil) {
        self.status = status
        self.headers = headers
        self.body = body
        self.stream = stream
        self.upgrade = upgrade
        self.generated = generated
    }

    /// A JSON response of `value`.
    public static func json<T: Encodable>(_ value: T, status: Int = 200,
                                          headers: [String: String] = [:]) throws -> HTTPResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var all = headers
        all["Content-Type"] = "application/json"
        return HTTPResponse(status: status, headers: all, body: Array(try encoder.encode(value)))
    }

    /// A JSON response of raw bytes already encoded.
    public static func json(bytes: [UInt8], status: Int = 200, headers: [String: String] = [:]) -> HTTPResponse {
        var all = headers
        all["Content-Type"] = "application/json"
        return HTTPResponse(status: status, headers: all, body: bytes)
    }

    /// A JSON response whose body is made as it is sent.
    public static func json(generated: GeneratedBody, status: Int = 200, headers: [String: String] = [:]) -> HTTPResponse {
        var all = headers
        all["Content-Type"] = "application/json"
        return HTTPResponse(status: status, headers: all, generated: generated)
    }

    /// The JSON error body `{"error":{"code","message"}}` with `status`.
    public static func error(_ error: HTTPError) -> HTTPResponse {
        let body = ErrorBody(error: .init(code: error.code, message: error.message))
        var response = (try? json(body, status: error.status))
            ?? HTTPResponse(status: error.status, body: Array("{}".utf8))
        for (k, v) in error.headers { response.headers[k] = v }
        return response
    }

    struct ErrorBody: Encodable {
        struct Detail: Encodable {
            let code: String
            let message: String
        }
        let error: Detail
    }
}
