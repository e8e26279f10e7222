import ArgumentParser
import CLIDaemon
import Foundation
import Logging

/// `stega daemon start|stop|status|logs`: the local daemon that follows operations for the
/// user (DESIGN.md, "The CLI daemon").
struct DaemonCmd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon", abstract: "The local daemon that records the outcome of every write (stega ops).",
        subcommands: [Start.self, Stop.self, Status.self, Logs.self, Run.self])

    struct Start: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start the daemon in the background; returns once it listens.")
        @Option(help: "Seconds an operation may stay pending before the daemon says timed_out.")
        var operationTimeout: Double = 3600

        func run() throws {
            let paths = DaemonPaths()
            do {
                try paths.createHome()
                try DaemonRuntime.claimSocketPath(paths, removingStale: false)
            } catch {
                throw Stega.fail("\(error)")
            }
            let pid = try Spawn.detached(["daemon", "run", "--operation-timeout", String(operationTimeout)], log: paths.log)
            let deadline = Date().addingTimeInterval(15)
            while Date() < deadline {
                // Its own answer: with two `start`s at once, the other's daemon may be the one there.
                if Self.answeringDaemon(paths) == Int(pid) {
                    print("stega daemon: started (pid \(pid)); socket \(paths.socket), log \(paths.log)")
                    return
                }
                if Spawn.exited(pid) {
                    // Another `start` at the same moment won the daemon's lock: say which runs.
                    if let other = Self.runningDaemon(paths, until: deadline) {
                        throw Stega.fail("the daemon already runs (pid \(other), socket \(paths.socket))")
                    }
                    let tail = (try? String(contentsOfFile: paths.log, encoding: .utf8))?.split(separator: "\n").suffix(3)
                        .joined(separator: "\n") ?? ""
                    throw Stega.fail("the daemon exited at start; its log (\(paths.log)) ends:\n\(tail)")
                }
                usleep(50_000)
            }
            throw Stega.fail("the daemon (pid \(pid)) did not answer within 15 s; see \(paths.log)")
        }

        /// The PID of the daemon that answers a status request on the socket now, if any.
        static func answeringDaemon(_ paths: DaemonPaths) -> Int? {
            guard case .running(let client) = DaemonClient.reach(paths, timeout: 2),
                  let answer = try? client.ask(["request": "status"]), answer["type"] as? String == "status" else { return nil }
            return Spawn.integer(answer["pid"])
        }

        /// The PID of the daemon that answers on the socket, waiting (until `deadline`) while
        /// one holds the lock in `home` but does not listen yet.
        static func runningDaemon(_ paths: DaemonPaths, until deadline: Date) -> Int? {
            let lock = open(paths.lockFile, O_RDWR | O_CLOEXEC)
            guard lock >= 0 else { return nil }
            defer { close(lock) }
            while Date() < deadline {
                if let pid = answeringDaemon(paths) { return pid }
                // The lock free: no daemon is starting, none will answer.
                if flock(lock, LOCK_EX | LOCK_NB) == 0 { flock(lock, LOCK_UN); return nil }
                usleep(50_000)
            }
            return nil
        }
    }

    struct Stop: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop the daemon (by the PID it recorded).")

        func run() throws {
            let paths = DaemonPaths()
            guard let text = try? String(contentsOfFile: paths.pidFile, encoding: .utf8),
                  let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0 else {
                throw Stega.fail("the daemon is not running (no \(paths.pidFile))")
            }
            guard Spawn.isDaemon(pid) else {
                unlink(paths.pidFile)
                throw Stega.fail("the daemon is not running (pid \(pid) in \(paths.pidFile) is gone; removed the file)")
            }
            kill(pid, SIGTERM)
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline, Spawn.isDaemon(pid) { usleep(20_000) }
            guard !Spawn.isDaemon(pid) else { throw Stega.fail("the daemon (pid \(pid)) did not stop within 10 s") }
            print("stega daemon: stopped (pid \(pid))")
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Whether the daemon runs, its link to the boundary; exit 0 when it runs and answers.")
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let paths = DaemonPaths()
            let answer: [String: Any]
            do {
                answer = try DaemonClient.connect(paths, timeout: 5).ask(["request": "status"])
            } catch let error as DaemonError {
                if json { Output.json(["running": false, "error": error.description]) }
                throw Stega.fail(error.description)
            } catch {
                throw Stega.fail("the daemon did not answer within 5 s")
            }
            if json {
                var fields = answer
                fields["type"] = nil
                fields["running"] = true
                return Output.json(fields)
            }
            let connected = answer["connected"] as? Bool ?? false
            let since = answer["since"] as? String ?? "?"
            print("stega daemon: running (pid \(Output.number(answer["pid"]))) since \(answer["started"] as? String ?? "?")")
            print("  socket      \(answer["socket"] as? String ?? paths.socket)")
            if connected {
                print("  boundary    \(answer["boundary"] as? String ?? "?"): connected since \(since)")
            } else {
                print("  boundary    \(answer["boundary"] as? String ?? "?"): unreachable since \(since) (\(answer["error"] as? String ?? "not connected yet")); retrying")
            }
            print("  operations  \(Output.number(answer["pending"])) pending, in \(answer["operations_file"] as? String ?? paths.database)")
            print("  log         \(answer["log"] as? String ?? paths.log)")
        }
    }

    struct Logs: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the daemon's log.")
        @Option(name: [.customShort("n"), .long], help: "Lines from the end.") var lines = 50
        @Flag(name: .shortAndLong, help: "Keep printing what is appended (Ctrl-C to stop).") var follow = false

        func run() throws {
            let paths = DaemonPaths()
            guard let handle = FileHandle(forReadingAtPath: paths.log) else {
                throw Stega.fail("no log at \(paths.log): the daemon never ran here")
            }
            let text = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
            for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().suffix(max(lines, 0)) {
                print(line)
            }
            guard follow else { return }
            while true {
                let more = handle.availableData
                if more.isEmpty { usleep(200_000); continue }
                FileHandle.standardOutput.write(more)
            }
        }
    }

    /// The daemon itself, in the foreground (what `start` runs detached; a service manager
    /// may run it directly).
    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run the daemon in the foreground.", shouldDisplay: false)
        @Option var operationTimeout: Double = 3600

        func run() throws {
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = ProcessInfo.processInfo.environment["STEGA_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .info
                return handler
            }
            let logger = Logger(label: "stega-daemon")
            do {
                try DaemonRuntime.run(paths: DaemonPaths(), webSocket: Endpoints().webSocket,
                                      operationTimeout: operationTimeout, logger: logger)
            } catch {
                logger.error("cannot start: \(error)")
                throw Stega.fail("\(error)")
            }
        }
    }
}

/// Starting the daemon as a process of its own.
enum Spawn {
    /// Runs this executable with `arguments` in a new session (no terminal, no parent to
    /// wait for it), standard input from /dev/null, output appended to `log`; returns its PID.
    static func detached(_ arguments: [String], log: String) throws -> pid_t {
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // POSIX_SPAWN_SETSID (glibc's 0x80; not in Swift's Glibc module).
        posix_spawnattr_setflags(&attributes, 0x80)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard result == 0 else { throw Stega.fail("cannot start the daemon: \(String(cString: strerror(result)))") }
        return pid
    }

    /// A JSON number as an integer (JSONSerialization gives Int or Double).
    static func integer(_ value: Any?) -> Int? {
        switch value {
        case let i as Int: return i
        case let d as Double where d.rounded() == d && abs(d) < 1e15: return Int(d)
        default: return nil
        }
    }

    /// Whether child `pid` has exited (and reaps it).
    static func exited(_ pid: pid_t) -> Bool {
        var status: Int32 = 0
        return waitpid(pid, &status, WNOHANG) == pid
    }

    /// Whether `pid` is a running `stega daemon run` (not a PID reused by another program).
    static func isDaemon(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0 || errno == EPERM,
              let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        let words = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        // A zombie has an empty command line.
        return words.count >= 3 && words[1] == "daemon" && words[2] == "run"
    }
}
