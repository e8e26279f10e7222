import Foundation
import PostgresNIO
@testable import ServiceRuntime
import Testing

/// `sslmode` against the test server, which accepts TLS with the test CA's certificate for
/// `localhost` (`make test`: scripts/postgres.sh with STEGA_POSTGRES_TLS, the CA in
/// STEGA_TEST_TLS_CA).
@Suite("PostgreSQL TLS (sslmode)", .enabled(if: Engine.databaseURL != nil && ProcessInfo.processInfo.environment["STEGA_TEST_TLS_CA"] != nil,
                                           Engine.skipReason))
struct PostgresTLSTests {
    static let ca = ProcessInfo.processInfo.environment["STEGA_TEST_TLS_CA"] ?? ""

    /// The URL of the test server with `host` and the query `query` instead of its own.
    static func url(host: String = "localhost", _ query: String) -> String {
        var components = URLComponents(string: Engine.databaseURL!)!
        components.host = host
        components.percentEncodedQuery = query
        return components.string!
    }

    /// Whether the store's connection uses TLS, as the server sees it.
    static func encrypted(_ url: String) async throws -> Bool {
        let database = try ServiceDatabase(postgres: try PostgresSettings(url: url, poolSize: 1),
                                           schema: "tls_\(UUID().uuidString.prefix(8).lowercased())", migrations: [])
        defer { database.close() }
        let ssl = try await database.read { connection -> Bool in
            guard case .postgres(let session) = connection else { return false }
            let ssl = try session.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").first?.column(0, as: Bool.self)
            try session.execute("DROP SCHEMA \"\(database.location.split(separator: " ").last!)\" CASCADE")
            return ssl ?? false
        }
        return ssl
    }

    @Test("verify-full with the right CA and host name, require, prefer: encrypted; disable: not")
    func modes() async throws {
        #expect(try await Self.encrypted(Self.url("sslmode=verify-full&sslrootcert=\(Self.ca)")))
        #expect(try await Self.encrypted(Self.url(host: "127.0.0.1", "sslmode=verify-ca&sslrootcert=\(Self.ca)")))
        #expect(try await Self.encrypted(Self.url("sslmode=require")))
        #expect(try await Self.encrypted(Self.url("sslmode=prefer")))
        #expect(try await !Self.encrypted(Self.url("sslmode=disable")))
    }

    @Test("verify-full refuses a host name the certificate does not name, and a CA that did not sign it")
    func refusals() async throws {
        // The certificate names localhost only.
        #expect(throws: StoreUnavailable.self) {
            _ = try ServiceDatabase(postgres: try PostgresSettings(url: Self.url(host: "127.0.0.1", "sslmode=verify-full&sslrootcert=\(Self.ca)")),
                                    schema: "tls_refused", migrations: [])
        }
        // Another CA (made for this test).
        let other = FileManager.default.temporaryDirectory.appendingPathComponent("other-ca-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: other) }
        let make = Process()
        make.executableURL = URL(fileURLWithPath: "/bin/bash")
        make.arguments = [URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../scripts/test-ca.sh").path,
                          other.path, "another CA"]
        try make.run()
        make.waitUntilExit()
        #expect(make.terminationStatus == 0)
        #expect(throws: StoreUnavailable.self) {
            _ = try ServiceDatabase(postgres: try PostgresSettings(url: Self.url("sslmode=verify-full&sslrootcert=\(other.path)/ca.pem")),
                                    schema: "tls_refused", migrations: [])
        }
    }

    @Test("sslmode and sslrootcert are checked at start")
    func settings() throws {
        #expect(throws: ConfigError.self) { try PostgresSettings(url: "postgres://u@h/db?sslmode=sometimes") }
        #expect(throws: ConfigError.self) { try PostgresSettings(url: "postgres://u@h/db?sslmode=verify-full") }
        #expect(throws: ConfigError.self) { try PostgresSettings(url: "postgres://u@h/db?ssl=true") }
        #expect(throws: ConfigError.self) { try PostgresSettings(url: "mysql://u@h/db") }
        #expect(throws: ConfigError.self) { try PostgresSettings(url: "postgres://u@h/db", poolSize: 0) }
        let s = try PostgresSettings(url: "postgres://us%40er:p%3Ass@db.example:6432/prod?sslmode=require", poolSize: 8)
        #expect(s.user == "us@er" && s.password == "p:ss" && s.host == "db.example" && s.port == 6432)
        #expect(s.database == "prod" && s.sslMode == .require && s.poolSize == 8)
        #expect(!s.description.contains("p:ss"))
        #expect(try PostgresSettings(url: "postgres://u@h").database == "u")
    }
}
