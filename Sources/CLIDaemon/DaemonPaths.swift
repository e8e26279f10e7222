import Foundation

/// Where the daemon's files live (DESIGN.md, "The CLI daemon"): with `STEGA_HOME` set,
/// all of them in it; otherwise the socket in `$XDG_RUNTIME_DIR` (else `~/.stega`) and the
/// PID file, log and operations store in `~/.stega`.
public struct DaemonPaths: Sendable, Equatable {
    /// The directory of the PID file, the log and `operations.sqlite`.
    public let home: String
    public let socket: String
    public let pidFile: String
    public let log: String
    public let database: String
    /// Held (flock) by the running daemon for its whole life: one daemon per home.
    public let lockFile: String

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        func set(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }
        if let home = set("STEGA_HOME") {
            self.init(home: home, socketDirectory: home)
        } else {
            let user = set("HOME") ?? NSHomeDirectory()
            let home = (user as NSString).appendingPathComponent(".stega")
            self.init(home: home, socketDirectory: set("XDG_RUNTIME_DIR") ?? home)
        }
    }

    public init(home: String, socketDirectory: String) {
        self.home = home
        socket = (socketDirectory as NSString).appendingPathComponent("stega.sock")
        pidFile = (home as NSString).appendingPathComponent("daemon.pid")
        log = (home as NSString).appendingPathComponent("daemon.log")
        database = (home as NSString).appendingPathComponent("operations.sqlite")
        lockFile = (home as NSString).appendingPathComponent("daemon.lock")
    }

    /// Creates the home directory (mode 0700: the operations and the log are the user's own)
    /// when it is missing; a directory that exists keeps its mode.
    public func createHome() throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: home, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw DaemonError("\(home) is not a directory") }
            return
        }
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
    }
}

/// A failure of the daemon or of talking to it, as one line for the user.
public struct DaemonError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
