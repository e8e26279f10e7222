import Dispatch
import Foundation
import Logging
import NIOCore
import PostgresNIO

/// One PostgreSQL connection, used from one thread at a time by blocking calls: what a write's
/// transaction body (synchronous, like SQLite's) runs against. Statements whose result is not
/// needed yet are sent without waiting (``send(_:_:)``, ``submit(_:_:)``): the connection
/// runs them in order while the body goes on, and the next ``query(_:_:)`` or the commit
/// waits for them — a command's write is a few statements and one wait, not one round trip
/// each. The first error of a statement sent ahead is thrown there.
public final class PostgresSession {
    let connection: PostgresConnection
    private let logger: Logger
    private var inFlight: [EventLoopFuture<PostgresQueryResult>] = []
    /// A transaction begun lazily (``beginLazily()``) that has sent nothing yet: its `BEGIN`
    /// goes out before its first statement, and it may instead end as one statement of its
    /// own (``submitAlone(_:_:)``).
    private var beginPending = false
    /// Whether a `BEGIN` was sent and no `COMMIT` or `ROLLBACK` since.
    public private(set) var inTransaction = false
    /// Rows gathered for one statement each (see ``batch(_:_:)``), in the order first asked for.
    private var batches: [(key: String, batch: any PostgresRowBatch)] = []

    init(connection: PostgresConnection, logger: Logger) {
        self.connection = connection
        self.logger = logger
    }

    /// A statement's result, waited for when asked.
    public struct Pending: Sendable {
        let future: EventLoopFuture<PostgresQueryResult>

        /// Its rows (waits for it).
        public func rows() throws -> [PostgresRow] { try future.wait().rows }
    }

    /// Sends `sql` without waiting for it.
    public func send(_ sql: String, _ binds: PostgresBindings = PostgresBindings()) {
        _ = submit(sql, binds)
    }

    /// Sends `sql` without waiting; its rows are read later from the result.
    public func submit(_ sql: String, _ binds: PostgresBindings = PostgresBindings()) -> Pending {
        if beginPending {
            beginPending = false
            _ = submitAlone("BEGIN")
        }
        return submitAlone(sql, binds)
    }

    /// Starts a transaction whose `BEGIN` is sent with its first statement.
    func beginLazily() {
        beginPending = true
    }

    /// Sends `sql` without waiting and without the lazy `BEGIN` (when nothing was sent yet, the
    /// statement is a transaction of its own).
    func submitAlone(_ sql: String, _ binds: PostgresBindings = PostgresBindings()) -> Pending {
        switch sql {
        case "BEGIN": inTransaction = true
        case "COMMIT", "ROLLBACK": inTransaction = false
        default: break
        }
        let future = connection.query(PostgresQuery(unsafeSQL: sql, binds: binds), logger: logger)
        inFlight.append(future)
        return Pending(future: future)
    }

    /// Takes the batches of rows gathered so far, unsent: the caller sends them (as part of one
    /// statement, see ``PostgresRowBatch/statement(into:)``).
    func takeBatches() -> [any PostgresRowBatch] {
        defer { batches = [] }
        return batches.map(\.batch)
    }

    /// The batch of rows named `key` of this transaction, made by `make` when first asked for:
    /// rows of many writes that share the transaction (group commit) go to the server in one
    /// statement, sent before the next query and before the outbox rows.
    public func batch<B: PostgresRowBatch>(_ key: String, _ make: () -> B) -> B {
        if let found = batches.first(where: { $0.key == key })?.batch as? B { return found }
        let made = make()
        batches.append((key, made))
        return made
    }

    /// Sends every batch of rows gathered so far (each one statement), without waiting.
    public func sendBatches() throws {
        let pending = batches
        batches = []
        for (_, batch) in pending { batch.send(on: self) }
    }

    /// Runs `sql` after everything sent before, and returns its rows.
    @discardableResult
    public func query(_ sql: String, _ binds: PostgresBindings = PostgresBindings()) throws -> [PostgresRow] {
        // What the transaction wrote so far is seen by its reads.
        try sendBatches()
        let pending = submit(sql, binds)
        try sync()
        return try pending.rows()
    }

    /// Runs `sql` after everything sent before, and returns how many rows it changed.
    @discardableResult
    public func execute(_ sql: String, _ binds: PostgresBindings = PostgresBindings()) throws -> Int {
        try sendBatches()
        let pending = submit(sql, binds)
        try sync()
        return try pending.future.wait().metadata.rows ?? 0
    }

    /// Waits for every statement sent; throws the first one's error.
    public func sync() throws {
        let futures = inFlight
        inFlight = []
        var firstError: (any Error)?
        for future in futures {
            do { try wait(for: future) } catch { if firstError == nil { firstError = error } }
        }
        if let firstError { throw firstError }
    }

    /// How long a statement may go unanswered before its connection is taken for dead. Seen
    /// under load: PostgreSQL restarted while a worker's transaction had statements in flight,
    /// and PostgresNIO never completed one of them — the worker waited forever. The store's
    /// statements are small (a batch of rows); one unanswered for this long means the server
    /// or the connection is gone.
    static let answerTimeout: TimeInterval = 10

    /// Waits for `future`, at most ``answerTimeout``; then closes the connection and throws
    /// ``StoreUnavailable`` (the pool opens a new one next time).
    private func wait(for future: EventLoopFuture<PostgresQueryResult>) throws {
        final class Outcome: @unchecked Sendable {
            var error: (any Error)?
        }
        let outcome = Outcome()
        let done = DispatchSemaphore(value: 0)
        future.whenComplete { result in
            if case .failure(let error) = result { outcome.error = error }
            done.signal()
        }
        guard done.wait(timeout: .now() + Self.answerTimeout) == .success else {
            PostgresStore.closeInBackground(connection)
            throw StoreUnavailable(reason: "PostgreSQL did not answer a statement within \(Int(Self.answerTimeout)) s; "
                                   + "its connection is closed")
        }
        if let error = outcome.error { throw error }
    }
}

/// Rows of one table gathered from several writes of a transaction, sent as one statement
/// (``PostgresSession/batch(_:_:)``).
public protocol PostgresRowBatch: AnyObject {
    /// The statement that stores the rows, its values appended to `binds`: its parameters are
    /// numbered from `binds.count + 1` as it was on entry (it may be a part of a larger
    /// statement, see ``PostgresSQL/renumbered(_:from:)``). Nil when there is nothing to store.
    func statement(into binds: inout PostgresBindings) -> String?
}

extension PostgresRowBatch {
    /// Sends the statement that stores the rows, without waiting.
    func send(on session: PostgresSession) {
        var binds = PostgresBindings()
        guard let sql = statement(into: &binds) else { return }
        session.send(sql, binds)
    }
}

/// Helpers for the SQL the stores compose.
public enum PostgresSQL {
    /// `sql` with its parameters `$1`, `$2`… renumbered to start at `first`: statements
    /// written alone, put together into one (data-modifying `WITH` parts) whose bindings
    /// follow each other.
    public static func renumbered(_ sql: String, from first: Int) -> String {
        guard first != 1 else { return sql }
        var out = ""
        out.reserveCapacity(sql.utf8.count + 16)
        var rest = Substring(sql)
        while let dollar = rest.firstIndex(of: "$") {
            out += rest[..<dollar]
            rest = rest[rest.index(after: dollar)...]
            let digits = rest.prefix(while: \.isASCIIDigit)
            if let number = Int(digits) {
                out += "$\(number + first - 1)"
                rest = rest.dropFirst(digits.count)
            } else {
                out += "$"
            }
        }
        out += rest
        return out
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}

extension PostgresRow {
    /// Column `index` decoded as `T` (by position: the store's queries name their columns).
    @inlinable
    public func column<T: PostgresDecodable>(_ index: Int, as type: T.Type = T.self) throws -> T {
        try makeRandomAccess()[index].decode(T.self, context: .default)
    }
}

extension PostgresBindings {
    /// Bindings of `values`, in order.
    public init(_ values: any PostgresDynamicTypeEncodable...) {
        self.init(capacity: values.count)
        for value in values { appendOpened(value) }
    }

    private mutating func appendOpened<T: PostgresDynamicTypeEncodable>(_ value: T) {
        append(value)
    }
}
