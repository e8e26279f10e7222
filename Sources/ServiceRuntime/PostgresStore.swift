import Dispatch
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import Synchronization

/// A service's schema in PostgreSQL, with a small pool of connections (``PostgresSettings/poolSize``).
///
/// Each connection has a thread of its own for the blocking work run on it (a write's
/// transaction body is synchronous, as with SQLite); its I/O runs on NIO's event loops. A connection is opened when first needed and again after it broke, so
/// the store recovers by itself once PostgreSQL is back: meanwhile every call throws
/// ``StoreUnavailable`` and the api answers 503.
///
/// Every connection's `search_path` is the service's schema (set at startup), so the
/// service's SQL names its tables unqualified.
final class PostgresStore: Sendable {
    let settings: PostgresSettings
    let schema: String
    /// NIO's process-wide event loops (one per core, started on first use): every store
    /// of the process shares them.
    private let group: MultiThreadedEventLoopGroup = .singleton
    private let slots: [Slot]
    private let free: Mutex<(slots: [Int], waiters: [CheckedContinuation<Int, Never>])>
    private let logger: Logger
    private let tls: PostgresConnection.Configuration.TLS
    private let connectionIDs = Atomic<Int>(0)
    /// Set by ``close()``: no connection is opened after it (work still queued fails).
    private let closed = Atomic<Bool>(false)

    init(settings: PostgresSettings, schema: String, logger: Logger) throws {
        self.settings = settings
        self.schema = schema
        self.logger = logger
        slots = (0..<settings.poolSize).map { Slot(index: $0) }
        free = Mutex((Array(0..<settings.poolSize), []))
        tls = try Self.tls(settings)
    }

    private static func tls(_ settings: PostgresSettings) throws -> PostgresConnection.Configuration.TLS {
        var configuration = TLSConfiguration.makeClientConfiguration()
        switch settings.sslMode {
        case .disable: return .disable
        case .prefer, .require: configuration.certificateVerification = .none
        case .verifyCA: configuration.certificateVerification = .noHostnameVerification
        case .verifyFull: configuration.certificateVerification = .fullVerification
        }
        if let ca = settings.sslRootCert {
            configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
        }
        let context = try NIOSSLContext(configuration: configuration)
        return settings.sslMode == .prefer ? .prefer(context) : .require(context)
    }

    private func configuration(searchPath: Bool) -> PostgresConnection.Configuration {
        var configuration = PostgresConnection.Configuration(
            host: settings.host, port: settings.port, username: settings.user, password: settings.password,
            database: settings.database, tls: tls)
        configuration.options.connectTimeout = .seconds(3)
        if searchPath { configuration.options.additionalStartupParameters = [("search_path", schema)] }
        return configuration
    }

    /// A new connection (blocking); throws ``StoreUnavailable`` when PostgreSQL does not answer.
    func connect(searchPath: Bool = true) throws -> PostgresConnection {
        do {
            return try PostgresConnection.connect(
                on: group.next(), configuration: configuration(searchPath: searchPath),
                id: connectionIDs.add(1, ordering: .relaxed).newValue, logger: logger
            ).wait()
        } catch {
            throw StoreUnavailable(reason: "PostgreSQL at \(settings.host):\(settings.port): \(Self.describe(error))")
        }
    }

    /// Runs `body` with a session on a pooled connection, on that connection's thread.
    func withSession<T: Sendable>(_ body: @escaping @Sendable (PostgresSession) throws -> T) async throws -> T {
        let index = await acquire()
        defer { release(index) }
        let slot = slots[index]
        return try await withCheckedThrowingContinuation { continuation in
            slot.queue.async { [self] in
                continuation.resume(with: Result { try run(body, on: slot) })
            }
        }
    }

    /// Runs `body` in a transaction (read committed) on a pooled connection; with `lock`, the
    /// transaction first takes that advisory lock (held until it ends), so the transactions of
    /// every process that use the same key run one after the other.
    /// `lazily`: the `BEGIN` waits for the body's first statement, and a body that sends none
    /// may end as one statement of its own (``PostgresSession/submitAlone(_:_:)``), which
    /// needs no `COMMIT`.
    func transaction<T: Sendable>(lock: String? = nil, lazily: Bool = false,
                                  _ body: @escaping @Sendable (PostgresSession) throws -> T) async throws -> T {
        try await withSession { session in
            if lazily {
                session.beginLazily()
            } else {
                session.send("BEGIN")
            }
            if let lock { session.send("SELECT pg_advisory_xact_lock(hashtext($1))", PostgresBindings(lock)) }
            do {
                let result = try body(session)
                if session.inTransaction {
                    try session.execute("COMMIT")
                } else {
                    try session.sync()
                }
                return result
            } catch {
                try? session.sync()
                if session.inTransaction && !session.connection.isClosed { _ = try? session.execute("ROLLBACK") }
                throw error
            }
        }
    }

    private func run<T>(_ body: (PostgresSession) throws -> T, on slot: Slot) throws -> T {
        guard !closed.load(ordering: .acquiring) else { throw StoreUnavailable(reason: "the store is closed") }
        let connection: PostgresConnection
        if let open = slot.connection, !open.isClosed {
            connection = open
        } else {
            slot.connection = nil
            connection = try connect()
            slot.connection = connection
        }
        do {
            return try body(PostgresSession(connection: connection, logger: logger))
        } catch {
            // A broken connection is opened again next time; its error says the store is down.
            if connection.isClosed || Self.isConnectionError(error) {
                Self.closeInBackground(connection)
                slot.connection = nil
                throw StoreUnavailable(reason: Self.describe(error))
            }
            throw error
        }
    }

    private func acquire() async -> Int {
        await withCheckedContinuation { continuation in
            let index = free.withLock { free -> Int? in
                if let index = free.slots.popLast() { return index }
                free.waiters.append(continuation)
                return nil
            }
            if let index { continuation.resume(returning: index) }
        }
    }

    private func release(_ index: Int) {
        let waiter = free.withLock { free -> CheckedContinuation<Int, Never>? in
            if free.waiters.isEmpty {
                free.slots.append(index)
                return nil
            }
            return free.waiters.removeFirst()
        }
        waiter?.resume(returning: index)
    }

    /// Closes every connection (at shutdown); the store opens none after it. Work running on
    /// a connection ends first (each connection's queue runs one thing at a time).
    func close() {
        closed.store(true, ordering: .releasing)
        for slot in slots {
            slot.queue.sync {
                try? slot.connection?.close().wait()
                slot.connection = nil
            }
        }
    }

    /// Closes `connection` without waiting (one that stopped answering may not close
    /// promptly), keeping it alive until its channel is closed: PostgresNIO asserts, in debug
    /// builds, that a connection is closed when it is deinitialized — dropped at once, the
    /// last reference ended a debug process in the middle of a PostgreSQL restart.
    static func closeInBackground(_ connection: PostgresConnection) {
        connection.close().whenComplete { _ in withExtendedLifetime(connection) {} }
    }

    static func isConnectionError(_ error: any Error) -> Bool {
        guard let error = error as? PSQLError else { return error is StoreUnavailable || error is ChannelError }
        switch error.code {
        case .serverClosedConnection, .clientClosedConnection, .connectionError, .uncleanShutdown,
             .sslUnsupported, .failedToAddSSLHandler:
            return true
        case .server:
            // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, 08xxx.
            let state = error.serverInfo?[.sqlState] ?? ""
            return state.hasPrefix("57P") || state.hasPrefix("08")
        default:
            return false
        }
    }

    /// A PostgreSQL error in one line: the server's message and SQLSTATE when it has one.
    static func describe(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            if let message = error.serverInfo?[.message] {
                return "\(message) (SQLSTATE \(error.serverInfo?[.sqlState] ?? "?"))"
            }
            return "\(error.code)" + (error.underlying.map { ": \($0)" } ?? "")
        }
        return "\(error)"
    }

    /// A pooled connection and the thread its blocking work runs on.
    private final class Slot: @unchecked Sendable {
        let queue: DispatchQueue
        /// Used only on `queue`.
        var connection: PostgresConnection?

        init(index: Int) { queue = DispatchQueue(label: "stega.postgres.\(index)") }
    }
}

/// The store cannot be reached (PostgreSQL down, refused, or the connection broke): nothing
/// of the write was stored, and it may be tried again.
public struct StoreUnavailable: Error, CustomStringConvertible {
    public let reason: String
    public var description: String { "store unavailable: \(reason)" }
}

/// One migration of a service's PostgreSQL schema: its statements, run in one transaction.
public struct PostgresMigration: Sendable {
    public let id: String
    public let statements: [String]

    public init(_ id: String, _ statements: [String]) {
        self.id = id
        self.statements = statements
    }
}

extension PostgresStore {
    /// Creates the schema and applies the migrations not applied yet, under an advisory lock
    /// held by this connection: processes that start at once take turns, and each sees what
    /// the one before applied (blocking).
    func migrate(_ migrations: [PostgresMigration]) throws {
        let connection = try connect(searchPath: false)
        defer { try? connection.close().wait() }
        let session = PostgresSession(connection: connection, logger: logger)
        let quoted = "\"" + schema.replacingOccurrences(of: "\"", with: "\"\"") + "\""
        do {
            try session.execute("SELECT pg_advisory_lock(hashtext('stega.migrations'))")
            try session.execute("CREATE SCHEMA IF NOT EXISTS \(quoted)")
            try session.execute("""
                CREATE TABLE IF NOT EXISTS \(quoted).migrations (id TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())
                """)
            let applied = Set(try session.query("SELECT id FROM \(quoted).migrations").map { try $0.column(0, as: String.self) })
            try session.execute("SET search_path TO \(quoted)")
            for migration in migrations where !applied.contains(migration.id) {
                session.send("BEGIN")
                for statement in migration.statements { session.send(statement) }
                session.send("INSERT INTO migrations (id) VALUES ($1)", PostgresBindings(migration.id))
                do {
                    try session.execute("COMMIT")
                } catch {
                    _ = try? session.execute("ROLLBACK")
                    throw ConfigError("migration \(migration.id) of schema \(schema) failed: \(Self.describe(error))")
                }
                logger.info("store migrated", metadata: ["schema": "\(schema)", "migration": "\(migration.id)"])
            }
            try session.execute("SELECT pg_advisory_unlock(hashtext('stega.migrations'))")
        } catch let error as ConfigError {
            throw error
        } catch {
            throw StoreUnavailable(reason: Self.describe(error))
        }
    }
}
