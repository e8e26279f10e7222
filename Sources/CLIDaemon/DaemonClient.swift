#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The CLI's side of the daemon's socket.
public final class DaemonClient {
    private let connection: LineConnection
    public let paths: DaemonPaths

    /// Whether a daemon answers at the socket, and if not, why.
    public enum Reach {
        case running(DaemonClient)
        /// No socket: no daemon was started (or it stopped).
        case notRunning
        /// A socket nobody listens on: a daemon that was killed left it (`start` replaces it).
        case stale
        /// The socket cannot be used: another user's, or not a socket.
        case unusable(String)
    }

    private init(connection: LineConnection, paths: DaemonPaths) {
        self.connection = connection
        self.paths = paths
    }

    public static func reach(_ paths: DaemonPaths, timeout: Double = 10) -> Reach {
        switch UnixSocket.connect(path: paths.socket) {
        case .success(let fd): return .running(DaemonClient(connection: LineConnection(fd: fd, receiveTimeout: timeout), paths: paths))
        case .failure(.missing): return .notRunning
        case .failure(.refused): return .stale
        case .failure(.denied):
            return .unusable("cannot use the daemon's socket \(paths.socket): permission denied (it belongs to another user)")
        case .failure(.notSocket): return .unusable("\(paths.socket) is not a socket: it cannot be the daemon's")
        case .failure(.other(let reason)): return .unusable("cannot reach the daemon at \(paths.socket): \(reason)")
        }
    }

    /// The daemon's connection, or a clear error when no daemon answers.
    public static func connect(_ paths: DaemonPaths, timeout: Double = 10) throws -> DaemonClient {
        switch reach(paths, timeout: timeout) {
        case .running(let client): return client
        case .notRunning: throw DaemonError("the daemon is not running (start it with: stega daemon start)")
        case .stale:
            throw DaemonError("the daemon is not running: \(paths.socket) was left by a daemon that did not stop (stega daemon start replaces it)")
        case .unusable(let reason): throw DaemonError(reason)
        }
    }

    /// Sends one request (a JSON object).
    public func send(_ request: [String: Any]) throws {
        let data = try JSONSerialization.data(withJSONObject: request, options: [.sortedKeys])
        guard connection.write(String(decoding: data, as: UTF8.self)) else { throw DaemonError("the daemon closed the connection") }
    }

    /// The next message (a JSON object); nil when the daemon closed the connection. Throws
    /// on a time-out (the receive time-out given to `reach`).
    public func receive() throws -> [String: Any]? {
        do {
            guard let line = try connection.readLine() else { return nil }
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else {
                throw DaemonError("the daemon answered something that is not a JSON object")
            }
            if object["type"] as? String == "error" { throw DaemonError("the daemon: \(object["message"] as? String ?? "error")") }
            return object
        } catch LineConnection.ReadError.timedOut {
            throw DaemonTimeout()
        } catch LineConnection.ReadError.tooLong {
            throw DaemonError("the daemon sent a line too long")
        } catch let error as DaemonError {
            throw error
        } catch {
            throw DaemonError("reading from the daemon failed")
        }
    }

    /// Makes reads wait at most `seconds`.
    public func setTimeout(_ seconds: Double) { connection.setReceiveTimeout(seconds) }

    /// One request, one answer.
    public func ask(_ request: [String: Any]) throws -> [String: Any] {
        try send(request)
        guard let answer = try receive() else { throw DaemonError("the daemon closed the connection") }
        return answer
    }
}

/// No message from the daemon within the time-out.
public struct DaemonTimeout: Error {}
