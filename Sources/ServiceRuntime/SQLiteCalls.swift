import Foundation
import GRDB
import GRDBSQLite

// Every call this project makes to SQLite's C API beside GRDB: the direct binding and column
// reads of the hot paths, the WAL checkpointer's hook and connection, and SQLite's memory
// counters. Nothing else imports GRDBSQLite.

/// Runs a prepared statement once per row on the hot write paths, binding with SQLite's own
/// calls on GRDB's `sqliteStatement` instead of building a `StatementArguments` per row (an
/// array of boxed values, converted and checked again on every call: 3.7% of returns-api's
/// CPU went to it for the 13 outbox columns alone, more than the insert itself took).
///
/// ```swift
/// let insert = try db.cachedStatement(sql: "INSERT INTO t (a, b) VALUES (?, ?)")
/// try DirectBinding.execute(insert, in: db) { row in
///     row.bind(1, "text")
///     row.bind(2, 1.5)
/// }
/// ```
///
/// `query` reads the rows of a statement the same way, with SQLite's column calls. Both run in
/// a transaction GRDB opened; every parameter must be bound each time (the bindings are
/// cleared after each execution).
public enum DirectBinding {
    /// The parameters of one execution.
    public struct Row {
        let statement: OpaquePointer

        /// Binds text, or NULL for `nil`.
        public func bind(_ index: Int32, _ value: String?) {
            guard var value else { return bindNull(index) }
            _ = value.withUTF8 { utf8 in
                // An empty buffer may have no address, which SQLite would take for NULL.
                if utf8.isEmpty {
                    sqlite3_bind_text(statement, index, "", 0, transient)
                } else {
                    sqlite3_bind_text(statement, index, utf8.baseAddress, Int32(utf8.count), transient)
                }
            }
        }

        public func bind(_ index: Int32, _ value: Double) { sqlite3_bind_double(statement, index, value) }

        public func bind(_ index: Int32, _ value: Double?) {
            guard let value else { return bindNull(index) }
            sqlite3_bind_double(statement, index, value)
        }

        public func bind(_ index: Int32, _ value: Int) { sqlite3_bind_int64(statement, index, Int64(value)) }

        /// Binds a blob (an empty one for empty data: never NULL).
        public func bind(_ index: Int32, _ value: Data) {
            _ = value.withUnsafeBytes { bytes in
                if let base = bytes.baseAddress, !bytes.isEmpty {
                    sqlite3_bind_blob(statement, index, base, Int32(bytes.count), transient)
                } else {
                    sqlite3_bind_zeroblob(statement, index, 0)
                }
            }
        }

        /// Binds a blob (an empty one for no bytes: never NULL).
        public func bind(_ index: Int32, _ value: [UInt8]) {
            _ = value.withUnsafeBytes { bytes in
                if let base = bytes.baseAddress, !bytes.isEmpty {
                    sqlite3_bind_blob(statement, index, base, Int32(bytes.count), transient)
                } else {
                    sqlite3_bind_zeroblob(statement, index, 0)
                }
            }
        }

        public func bindNull(_ index: Int32) { sqlite3_bind_null(statement, index) }
    }

    /// The columns of the current result row of a ``query(_:in:bind:each:)``.
    public struct Columns {
        let statement: OpaquePointer

        public func double(_ index: Int32) -> Double { sqlite3_column_double(statement, index) }
        public func int(_ index: Int32) -> Int { Int(sqlite3_column_int64(statement, index)) }
        public func isNull(_ index: Int32) -> Bool { sqlite3_column_type(statement, index) == SQLITE_NULL }

        /// The column's bytes as a blob, valid only during the call of `body`.
        public func withBlob<T>(_ index: Int32, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
            let base = sqlite3_column_blob(statement, index)
            let count = Int(sqlite3_column_bytes(statement, index))
            return try body(UnsafeRawBufferPointer(start: base, count: base == nil ? 0 : count))
        }

        /// The column's UTF-8 bytes, valid only during the call of `body`.
        public func withText<T>(_ index: Int32, _ body: (UnsafeBufferPointer<UInt8>) throws -> T) rethrows -> T {
            let count = Int(sqlite3_column_bytes(statement, index))
            guard let base = sqlite3_column_text(statement, index) else {
                return try body(UnsafeBufferPointer(start: nil, count: 0))
            }
            return try body(UnsafeBufferPointer(start: base, count: count))
        }
    }

    /// Binds with `bind`, then calls `each` for every result row, read with SQLite's own
    /// column calls (no GRDB `Row` per result row: on the worker's hot reads those and their
    /// boxed values cost more than the query).
    public static func query(_ statement: Statement, in db: Database, bind: (Row) -> Void,
                             each: (Columns) throws -> Void) throws {
        let raw = statement.sqliteStatement
        defer {
            sqlite3_reset(raw)
            sqlite3_clear_bindings(raw)
        }
        sqlite3_reset(raw)
        bind(Row(statement: raw))
        while true {
            let code = sqlite3_step(raw)
            if code == SQLITE_DONE { return }
            guard code == SQLITE_ROW else {
                let message = String(cString: sqlite3_errmsg(db.sqliteConnection))
                throw DatabaseError(resultCode: ResultCode(rawValue: code), message: message, sql: statement.sql)
            }
            try each(Columns(statement: raw))
        }
    }

    /// Binds with `bind` and steps `statement` to its end; throws SQLite's error as GRDB's
    /// `DatabaseError` (the transaction is then the caller's to roll back, as with GRDB).
    public static func execute(_ statement: Statement, in db: Database, _ bind: (Row) -> Void) throws {
        try query(statement, in: db, bind: bind) { _ in }
    }
}

/// `SQLITE_TRANSIENT`: SQLite copies the value, so nothing stays bound to Swift memory that
/// outlives the call.
private let transient = unsafeBitCast(OpaquePointer(bitPattern: -1), to: sqlite3_destructor_type.self)

/// A connection of SQLite's own for checkpoints (`WALCheckpointer`), outside GRDB's pool.
/// Used from one queue at a time (the checkpointer's, under its lock).
struct CheckpointConnection: ~Copyable {
    private let handle: OpaquePointer

    /// Calls `sqlite3_open_v2` (read-write, no mutex: one user at a time) and
    /// `sqlite3_busy_handler` (a restart waits for readers in steps of 50 µs, 40 at most, then
    /// gives up until the next request); reads the schema so the connection knows the file is
    /// in WAL mode. `nil` when any of it fails.
    init?(path: String) {
        var opened: OpaquePointer?
        guard sqlite3_open_v2(path, &opened, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nil) == SQLITE_OK,
              let opened else {
            sqlite3_close_v2(opened)
            return nil
        }
        sqlite3_busy_handler(opened, { _, tries in
            usleep(50)
            return tries < 40 ? 1 : 0
        }, nil)
        guard sqlite3_exec(opened, "SELECT 1 FROM sqlite_master LIMIT 1", nil, nil, nil) == SQLITE_OK else {
            sqlite3_close_v2(opened)
            return nil
        }
        handle = opened
    }

    deinit { sqlite3_close_v2(handle) }

    /// Calls `sqlite3_wal_checkpoint_v2` (`SQLITE_CHECKPOINT_PASSIVE`, or `RESTART`).
    func checkpoint(restart: Bool) {
        _ = sqlite3_wal_checkpoint_v2(handle, nil, restart ? SQLITE_CHECKPOINT_RESTART : SQLITE_CHECKPOINT_PASSIVE, nil, nil)
    }

    /// Calls `sqlite3_db_release_memory`.
    func releaseMemory() { sqlite3_db_release_memory(handle) }
}

/// The WAL hook of a writer connection (`sqlite3_wal_hook`).
enum WALHook {
    /// Calls `sqlite3_wal_hook` on `db`: after each commit, `checkpointer` gets the WAL's length
    /// in frames (``WALCheckpointer/request(frames:)``); past ``WALCheckpointer/inlineThreshold``
    /// frames the commit also checkpoints (passive) itself, and past
    /// ``WALCheckpointer/inlineRestartThreshold`` it restarts the WAL (see there). Replaces
    /// SQLite's automatic checkpoint. `checkpointer` must outlive the connection.
    static func install(on db: Database, checkpointer: WALCheckpointer) {
        sqlite3_wal_hook(db.sqliteConnection, { context, connection, _, frames in
            if frames >= WALCheckpointer.inlineRestartThreshold {
                // BUSY: another connection (the other process's commit, in this same place)
                // checkpoints. Not appending meanwhile is what lets that one take the write
                // lock and finish; 200 tries, 0.5 ms apart, at most.
                for _ in 0..<200 where sqlite3_wal_checkpoint_v2(connection, nil, SQLITE_CHECKPOINT_RESTART, nil, nil) == SQLITE_BUSY {
                    usleep(500)
                }
            } else if frames >= WALCheckpointer.inlineThreshold {
                _ = sqlite3_wal_checkpoint_v2(connection, nil, SQLITE_CHECKPOINT_PASSIVE, nil, nil)
            }
            Unmanaged<WALCheckpointer>.fromOpaque(context!).takeUnretainedValue().request(frames: Int(frames))
            return SQLITE_OK
        }, Unmanaged.passUnretained(checkpointer).toOpaque())
    }
}

/// SQLite's own memory accounting (every connection of the process).
enum SQLiteMemory {
    static var usage: (used: Int, highwater: Int) {
        (Int(sqlite3_memory_used()), Int(sqlite3_memory_highwater(0)))
    }
}
