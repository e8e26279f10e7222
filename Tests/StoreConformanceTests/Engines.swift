import Foundation
import GRDB
import Logging
import PostgresNIO
@testable import ServiceRuntime
import Testing

/// The two engines a service's store runs on. SQLite always; PostgreSQL when
/// `STEGA_TEST_DATABASE_URL` names a server (`make test` starts one: scripts/postgres.sh).
enum Engine: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case sqlite, postgres

    static let databaseURL = ProcessInfo.processInfo.environment["STEGA_TEST_DATABASE_URL"]
    static let skipReason: Comment = "STEGA_TEST_DATABASE_URL is not set: no PostgreSQL (make test starts one)"
    /// The engines to run on here.
    static let available: [Engine] = databaseURL == nil ? [.sqlite] : [.sqlite, .postgres]

    var testDescription: String { rawValue }

    /// A place for one test's store: a folder for SQLite files, or a schema-name prefix in
    /// PostgreSQL (dropped by ``Place/remove()``).
    func place() -> Place { Place(engine: self, tag: "t" + UUID().uuidString.prefix(8).lowercased()) }
}

struct Place: Sendable {
    let engine: Engine
    let tag: String

    var directory: URL { FileManager.default.temporaryDirectory.appendingPathComponent("store-\(tag)") }

    /// Opens (creating and migrating) `name`'s store at this place, as a process would; each
    /// call is another "process" on the same store.
    func open(_ name: String, pageSize: Int? = nil, migrations: StoreMigrations = .none) throws -> ServiceDatabase {
        switch engine {
        case .sqlite:
            return try ServiceDatabase(path: directory.appendingPathComponent("\(name).sqlite").path, pageSize: pageSize,
                                       migrations: migrations.sqlite)
        case .postgres:
            return try ServiceDatabase(postgres: try PostgresSettings(url: Engine.databaseURL!, poolSize: 4),
                                       schema: "\(tag)_\(name)", migrations: migrations.postgres)
        }
    }

    /// Drops what the test made.
    func remove() async {
        switch engine {
        case .sqlite:
            try? FileManager.default.removeItem(at: directory)
        case .postgres:
            guard let database = try? ServiceDatabase(postgres: try PostgresSettings(url: Engine.databaseURL!, poolSize: 1),
                                                      schema: "\(tag)_cleanup", migrations: []) else { return }
            let tag = tag
            _ = try? await database.read { connection in
                guard case .postgres(let session) = connection else { return }
                for row in try session.query("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
                                             PostgresBindings(tag + "\\_%")) {
                    try session.execute("DROP SCHEMA \"\(try row.column(0, as: String.self))\" CASCADE")
                }
            }
            database.close()
        }
    }
}

/// Polls `condition` every 10 ms; fails after `seconds`.
func waitUntil(_ what: String, seconds: Double = 20, _ condition: () async throws -> Bool) async throws {
    let deadline = Date().addingTimeInterval(seconds)
    while try await !condition() {
        guard Date() < deadline else {
            Issue.record("timed out waiting for \(what)")
            throw CancellationError()
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}
