/// An error that sets the response: its status, and `{"error":{"code","message"}}`.
/// Anything else a handler throws becomes a logged 500 with no error text in the body.
public struct HTTPError: Error, Equatable, CustomStringConvertible {
    public let status: Int
    public let code: String
    public let message: String
    public var headers: [String: String]

    public init(_ status: Int, _ code: String, _ message: String, headers: [String: String] = [:]) {
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
    }

    public var description: String { "\(status) \(code): \(message)" }

    public static func notFound(_ message: String = "no such route") -> HTTPError {
        HTTPError(404, "not_found", message)
    }

    public static func invalidBody(_ message: String) -> HTTPError { HTTPError(400, "invalid_body", message) }
    public static func invalidQuery(_ message: String) -> HTTPError { HTTPError(400, "invalid_query", message) }
    public static func unprocessable(_ code: String, _ message: String) -> HTTPError {
        HTTPError(422, code, message)
    }
}
