import Foundation

/// Where a service's PostgreSQL store is: `STEGA_DATABASE_URL`
/// (`postgres://user:password@host:port/database?sslmode=require&sslrootcert=/path/ca.pem`)
/// and `STEGA_DB_POOL` (connections per process).
///
/// `sslmode` is libpq's: `disable`, `prefer` (the default: TLS when the server offers it,
/// without checking its certificate), `require` (TLS, certificate not checked), `verify-ca`
/// (certificate signed by `sslrootcert`, any host name) and `verify-full` (and the host name).
public struct PostgresSettings: Sendable, CustomStringConvertible {
    public enum SSLMode: String, Sendable, CaseIterable {
        case disable, prefer, require
        case verifyCA = "verify-ca"
        case verifyFull = "verify-full"
    }

    public var host: String
    public var port: Int
    public var user: String
    public var password: String?
    public var database: String
    public var sslMode: SSLMode
    /// A PEM file of the certificate authorities trusted for `verify-ca` / `verify-full`.
    public var sslRootCert: String?
    /// Connections each process opens at most (`STEGA_DB_POOL`).
    public var poolSize: Int

    public init(url: String, poolSize: Int = 4) throws {
        guard let components = URLComponents(string: url),
              components.scheme == "postgres" || components.scheme == "postgresql" else {
            throw ConfigError("STEGA_DATABASE_URL must be postgres://user:password@host:port/database, not \(Self.redacted(url))")
        }
        guard let host = components.host, !host.isEmpty else {
            throw ConfigError("STEGA_DATABASE_URL has no host: \(Self.redacted(url))")
        }
        self.host = host
        port = components.port ?? 5432
        user = components.user?.removingPercentEncoding ?? "postgres"
        password = components.password?.removingPercentEncoding
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        database = path.removingPercentEncoding.flatMap { $0.isEmpty ? nil : $0 } ?? user
        var mode = SSLMode.prefer
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let value = item.value.flatMap(SSLMode.init(rawValue:)) else {
                    throw ConfigError("STEGA_DATABASE_URL: sslmode must be one of \(SSLMode.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                mode = value
            case "sslrootcert":
                sslRootCert = item.value
            default:
                throw ConfigError("STEGA_DATABASE_URL: unknown parameter \(item.name) (sslmode and sslrootcert are known)")
            }
        }
        sslMode = mode
        if (mode == .verifyCA || mode == .verifyFull), sslRootCert == nil {
            // libpq's default, ~/.postgresql/root.crt, is not assumed: say which file.
            throw ConfigError("STEGA_DATABASE_URL: sslmode=\(mode.rawValue) needs sslrootcert=/path/to/ca.pem")
        }
        guard (1...200).contains(poolSize) else { throw ConfigError("STEGA_DB_POOL must be 1…200, not \(poolSize)") }
        self.poolSize = poolSize
    }

    /// The URL without its password (for logs and `/metrics` labels).
    public var description: String {
        "postgres://\(user)@\(host):\(port)/\(database)?sslmode=\(sslMode.rawValue)"
    }

    private static func redacted(_ url: String) -> String {
        guard var components = URLComponents(string: url), components.password != nil else { return url }
        components.password = "***"
        return components.string ?? "(unreadable)"
    }
}
