#if canImport(Glibc)
import Glibc
#endif
import EventCatalog
import Foundation
import HTTPServer
import Logging
import Synchronization

/// The daemon's side of the unix socket: one thread per CLI connection, line-delimited
/// JSON (the README's "The CLI daemon" lists the requests and answers).
///
/// A connection from another user is refused (`SO_PEERCRED`), on top of the socket's mode
/// 0600; a line that is not a request gets `{"type":"error"}` and the connection goes on;
/// a line longer than ``LineConnection/maxLine`` ends it.
final class DaemonServer: Sendable {
    let core: DaemonCore
    let listener: Int32
    let logger: Logger
    /// What `status` reports besides the core's state.
    let describe: @Sendable () -> [String: JSONValue]

    init(core: DaemonCore, listener: Int32, logger: Logger, describe: @escaping @Sendable () -> [String: JSONValue]) {
        self.core = core
        self.listener = listener
        self.logger = logger
        self.describe = describe
    }

    /// Accepts connections until the listener is shut down.
    func acceptLoop() {
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE {
                    if errno != EINTR { usleep(100_000) }
                    continue
                }
                return  // shut down
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            let connection = LineConnection(fd: fd, receiveTimeout: 30)
            Thread.detachNewThread { [self] in serve(connection) }
        }
    }

    func serve(_ connection: LineConnection) {
        guard let uid = UnixSocket.peerUID(connection.fd), uid == getuid() else {
            logger.warning("refused a connection from another user")
            // Its request is read first: closing with unread bytes would reset the
            // connection, and the answer would be lost.
            connection.setReceiveTimeout(1)
            _ = try? connection.readLine()
            connection.write(Self.error("this daemon belongs to another user"))
            return
        }
        while true {
            let line: String?
            do {
                line = try connection.readLine()
            } catch .tooLong {
                connection.write(Self.error("a request is one line of at most \(LineConnection.maxLine) bytes"))
                connection.finish()
                return
            } catch {
                return
            }
            guard let line else { return }
            if line.allSatisfy({ $0 == " " || $0 == "\t" || $0 == "\r" }) { continue }
            switch DaemonRequest.parse(line) {
            case .failure(let error):
                connection.write(Self.error(error.description))
            case .success(.status):
                connection.write(status())
            case .success(.follow):
                return follow(connection)
            case .success(.register(let id, let command, let submitted)):
                guard let record = register(connection, id, command, submitted) else { continue }
                connection.write(Self.json(["type": .string("registered"), "operation_id": .string(record.operationId),
                                            "status": .string(record.status)]))
            case .success(.wait(let id, let command, let submitted)):
                guard let record = register(connection, id, command, submitted) else { continue }
                return stream(connection, waitingFor: record.operationId)
            }
        }
    }

    /// Registers the operation with the core; nil (the CLI told why) when that failed.
    private func register(_ connection: LineConnection, _ id: String, _ command: String, _ submitted: Double?) -> OperationRecord? {
        do {
            return try core.register(id, command: command, submitted: submitted ?? Date().timeIntervalSince1970)
        } catch {
            connection.write(Self.error("\(error)"))
            return nil
        }
    }

    /// Sends the events of `id` and then its outcome; ends when the outcome is sent or the
    /// CLI went away.
    private func stream(_ connection: LineConnection, waitingFor id: String) {
        let queue = LineQueue()
        let token: UUID
        do {
            token = try core.wait(id) { update in
                switch update {
                case .event(let line): queue.push(line)
                case .outcome(let line): queue.push(line, last: true)
                }
            }
        } catch {
            connection.write(Self.error("\(error)"))
            return
        }
        defer { core.stopWaiting(id, token: token) }
        queue.drain(to: connection)
    }

    /// Sends each operation as it resolves until the CLI goes away.
    private func follow(_ connection: LineConnection) {
        let queue = LineQueue()
        let token = core.follow { record in queue.push(Self.outcome(record)) }
        defer { core.stopFollowing(token) }
        connection.write(Self.json(["type": .string("following")]))
        queue.drain(to: connection)
    }

    private func status() -> String {
        let (link, pending, subscribed) = core.status
        var fields = describe()
        fields["type"] = .string("status")
        fields["pid"] = .number(Double(getpid()), integral: true)
        fields["started"] = .string(RFC3339.string(core.started.timeIntervalSince1970, milliseconds: true))
        fields["connected"] = .bool(link.connected)
        fields["since"] = .string(RFC3339.string(link.since.timeIntervalSince1970, milliseconds: true))
        fields["error"] = link.error.map { .string($0) } ?? .null
        fields["pending"] = .number(Double(pending), integral: true)
        fields["subscribed"] = .number(Double(subscribed), integral: true)
        return Self.json(fields)
    }

    /// `--follow`'s line for `record`: the `ops --json` fields, the duration and the type.
    static func outcome(_ record: OperationRecord) -> String {
        var fields = record.fields
        fields["type"] = .string("outcome")
        fields["duration"] = record.duration.map { .number($0, integral: false) } ?? .null
        return json(fields)
    }

    static func error(_ message: String) -> String { json(["type": .string("error"), "message": .string(message)]) }

    static func json(_ fields: [String: JSONValue]) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(JSONValue.object(fields))).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }
}

/// Lines for one streaming connection: pushed by the core's callbacks (any thread), written
/// by the connection's thread, which also notices when the CLI goes away.
final class LineQueue: Sendable {
    private let lines = Mutex<(items: [String], last: Bool)>(([], false))
    private let ready = DispatchSemaphore(value: 0)

    func push(_ line: String, last: Bool = false) {
        lines.withLock {
            $0.items.append(line)
            if last { $0.last = true }
        }
        ready.signal()
    }

    /// Writes lines until the last one went or the connection closed.
    func drain(to connection: LineConnection) {
        while true {
            _ = ready.wait(timeout: .now() + .milliseconds(500))
            let (items, last) = lines.withLock { state in
                defer { state.items = [] }
                return (state.items, state.last)
            }
            for line in items where !connection.write(line) { return }
            if last || connection.peerClosed { return }
        }
    }
}
