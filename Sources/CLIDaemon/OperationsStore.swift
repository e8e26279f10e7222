import EventCatalog
import Foundation
import GRDB
import HTTPServer

/// One operation as `stega ops` lists it.
public struct OperationRecord: Sendable, Equatable {
    public var operationId: String
    /// The command that started it (`record_prices`, `add_window`; `-` when only waited for).
    public var command: String
    /// When the CLI submitted it (Unix seconds).
    public var submitted: Double
    /// `pending`, `succeeded`, `failed` or `timed_out` (the boundary's words).
    public var status: String
    /// Distinct events seen for it.
    public var events: Int
    /// When it resolved (Unix seconds).
    public var resolvedAt: Double?

    public init(operationId: String, command: String, submitted: Double, status: String = "pending", events: Int = 0,
                resolvedAt: Double? = nil) {
        self.operationId = operationId
        self.command = command
        self.submitted = submitted
        self.status = status
        self.events = events
        self.resolvedAt = resolvedAt
    }

    /// Seconds from submission to the outcome; nil while pending.
    public var duration: Double? { resolvedAt.map { max(0, $0 - submitted) } }

    /// What `stega ops --json` prints for it (DESIGN.md: exactly these keys).
    public var fields: [String: JSONValue] {
        ["operation_id": .string(operationId), "command": .string(command),
         "submitted": .string(RFC3339.string(submitted, milliseconds: true)), "status": .string(status),
         "events": .number(Double(events), integral: true)]
    }
}

/// `operations.sqlite`: the operations the daemon follows and every event it counted for
/// them (each event as the boundary sent it, so `stega wait` can replay them, and its id, so
/// one replayed again after a reconnect or a daemon restart counts once).
///
/// The daemon writes; any CLI reads (`stega ops`), also while no daemon runs. WAL, so
/// readers never wait for the daemon.
public final class OperationsStore: Sendable {
    private let writer: any DatabaseWriter
    /// Operations kept at most; the oldest resolved ones go first.
    public let capacity: Int
    /// Events kept per operation (the boundary keeps as many); past it they are counted only.
    public static let maxEventsKept = 1000

    /// Opens (creating it, mode 0600) the store at `path` for the daemon.
    public init(path: String, capacity: Int = 10_000) throws {
        self.capacity = capacity
        let existed = FileManager.default.fileExists(atPath: path)
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        writer = try DatabasePool(path: path, configuration: configuration)
        if !existed { chmod(path, 0o600) }
        try Self.migrator.migrate(writer)
    }

    /// Opens the store read-only (a CLI listing operations); nil when there is none yet.
    public static func reader(path: String) throws -> OperationsReader? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(5)
        return OperationsReader(queue: try DatabaseQueue(path: path, configuration: configuration))
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE operations (
                    operation_id TEXT PRIMARY KEY NOT NULL,
                    command TEXT NOT NULL,
                    submitted REAL NOT NULL,
                    status TEXT NOT NULL,
                    events INTEGER NOT NULL DEFAULT 0,
                    resolved_at REAL
                );
                CREATE INDEX operations_by_submitted ON operations(submitted);
                CREATE TABLE operation_events (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    operation_id TEXT NOT NULL REFERENCES operations(operation_id) ON DELETE CASCADE,
                    event_id TEXT NOT NULL,
                    routing_key TEXT NOT NULL,
                    message TEXT NOT NULL,
                    UNIQUE (operation_id, event_id)
                );
                """)
        }
        return migrator
    }

    /// Adds `record` unless the operation is known already; returns the stored one.
    public func register(_ record: OperationRecord) throws -> OperationRecord {
        try writer.write { db in
            try db.execute(sql: """
                INSERT INTO operations (operation_id, command, submitted, status, events) VALUES (?, ?, ?, ?, 0)
                ON CONFLICT(operation_id) DO UPDATE SET command = excluded.command WHERE operations.command = '-'
                """, arguments: [record.operationId, record.command, record.submitted, record.status])
            try prune(db)
            return try Self.fetch(db, record.operationId)!
        }
    }

    /// Records that `event` (the boundary's message, `message` its JSON) was counted for its
    /// operation, with the operation's status and event count after it.
    public func add(event eventId: String, routingKey: String, message: String, to operation: String, status: String,
                    events: Int, resolvedAt: Double?) throws {
        try writer.write { db in
            let kept = try Int.fetchOne(db, sql: "SELECT count(*) FROM operation_events WHERE operation_id = ?",
                                        arguments: [operation]) ?? 0
            if kept < Self.maxEventsKept {
                try db.execute(sql: """
                    INSERT OR IGNORE INTO operation_events (operation_id, event_id, routing_key, message) VALUES (?, ?, ?, ?)
                    """, arguments: [operation, eventId, routingKey, message])
            }
            try db.execute(sql: "UPDATE operations SET status = ?, events = ?, resolved_at = ? WHERE operation_id = ?",
                           arguments: [status, events, resolvedAt, operation])
        }
    }

    /// Marks `operation` resolved with `status` (a time-out: no event decided it).
    public func resolve(_ operation: String, status: String, at time: Double) throws {
        try writer.write { db in
            try db.execute(sql: "UPDATE operations SET status = ?, resolved_at = ? WHERE operation_id = ? AND status = 'pending'",
                           arguments: [status, time, operation])
        }
    }

    /// The operations still pending, oldest first, each with its events as stored (oldest first).
    public func pending() throws -> [(OperationRecord, [StoredEvent])] {
        try writer.read { db in
            let records = try Self.records(db, sql: "SELECT * FROM operations WHERE status = 'pending' ORDER BY submitted")
            return try records.map { ($0, try Self.events(db, $0.operationId)) }
        }
    }

    /// One operation and its events; nil when unknown.
    public func operation(_ id: String) throws -> (OperationRecord, [StoredEvent])? {
        try writer.read { db in
            guard let record = try Self.fetch(db, id) else { return nil }
            return (record, try Self.events(db, id))
        }
    }

    /// The newest operations first (`limit` nil: all).
    public func list(limit: Int?) throws -> [OperationRecord] {
        try writer.read { db in try Self.list(db, limit: limit) }
    }

    /// Drops the oldest resolved operations past ``capacity``.
    private func prune(_ db: Database) throws {
        let count = try Int.fetchOne(db, sql: "SELECT count(*) FROM operations") ?? 0
        guard count > capacity else { return }
        try db.execute(sql: """
            DELETE FROM operations WHERE operation_id IN (
                SELECT operation_id FROM operations WHERE status != 'pending' ORDER BY submitted LIMIT ?)
            """, arguments: [count - capacity])
    }

    static func list(_ db: Database, limit: Int?) throws -> [OperationRecord] {
        try records(db, sql: "SELECT * FROM operations ORDER BY submitted DESC, rowid DESC LIMIT ?", arguments: [limit ?? -1])
    }

    static func fetch(_ db: Database, _ id: String) throws -> OperationRecord? {
        try records(db, sql: "SELECT * FROM operations WHERE operation_id = ?", arguments: [id]).first
    }

    static func records(_ db: Database, sql: String, arguments: StatementArguments = []) throws -> [OperationRecord] {
        try Row.fetchAll(db, sql: sql, arguments: arguments).map {
            OperationRecord(operationId: $0["operation_id"], command: $0["command"], submitted: $0["submitted"],
                            status: $0["status"], events: $0["events"], resolvedAt: $0["resolved_at"])
        }
    }

    static func events(_ db: Database, _ id: String) throws -> [StoredEvent] {
        try Row.fetchAll(db, sql: "SELECT event_id, routing_key, message FROM operation_events WHERE operation_id = ? ORDER BY seq",
                         arguments: [id]).map { StoredEvent(eventId: $0["event_id"], routingKey: $0["routing_key"], message: $0["message"]) }
    }
}

/// An event the daemon counted, as stored.
public struct StoredEvent: Sendable, Equatable {
    public let eventId: String
    public let routingKey: String
    /// The boundary's message for it (JSON text).
    public let message: String
}

/// `operations.sqlite` opened read-only by a CLI.
public struct OperationsReader: Sendable {
    let queue: DatabaseQueue

    /// The newest operations first (`limit` nil: all).
    public func list(limit: Int?) throws -> [OperationRecord] {
        try queue.read { db in
            // A store the daemon never migrated (another program's file) has no table: nothing to list.
            guard try db.tableExists("operations") else { return [] }
            return try OperationsStore.list(db, limit: limit)
        }
    }
}
