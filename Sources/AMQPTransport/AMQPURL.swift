import Foundation

/// A parsed `amqp://user:password@host:port/vhost` (or `amqps://`) URL.
///
/// No path, or `/`, means vhost `/`; otherwise the path without its leading slash,
/// percent-decoded (`%2F` → `/`). Ports default to 5672, or 5671 for `amqps`.
public struct AMQPURL: Sendable, Equatable, CustomStringConvertible {
    public var user: String
    public var password: String
    public var host: String
    public var port: Int
    public var vhost: String
    public var tls: Bool

    public init(user: String = "guest", password: String = "guest", host: String = "127.0.0.1",
                port: Int = 5672, vhost: String = "/", tls: Bool = false) {
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.vhost = vhost
        self.tls = tls
    }

    /// Parses `text`; throws `AMQPError.invalidURL`.
    public init(parsing text: String) throws {
        guard let components = URLComponents(string: text),
              let scheme = components.scheme?.lowercased(), scheme == "amqp" || scheme == "amqps"
        else {
            throw AMQPError(.invalidURL, "expected amqp://user:password@host:port/vhost")
        }
        tls = scheme == "amqps"
        user = components.user ?? "guest"
        password = components.password ?? "guest"
        host = components.host.flatMap { $0.isEmpty ? nil : $0 } ?? "127.0.0.1"
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        port = components.port ?? (tls ? 5671 : 5672)
        let path = components.percentEncodedPath
        if path.isEmpty || path == "/" {
            vhost = "/"
        } else {
            vhost = String(path.dropFirst()).removingPercentEncoding ?? String(path.dropFirst())
        }
        guard (1...65535).contains(port) else {
            throw AMQPError(.invalidURL, "port \(port) out of range")
        }
    }

    /// The URL with the password hidden, for logs.
    public var description: String {
        let vhostPart = vhost == "/" ? "" : "/" + (vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? vhost)
        return "\(tls ? "amqps" : "amqp")://\(user):***@\(host):\(port)\(vhostPart)"
    }
}
