#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HTTPServer
import Logging
import Synchronization

/// The daemon process (`stega daemon run`): the unix socket, the WebSocket to the boundary,
/// and the operations store, until SIGTERM or SIGINT.
public enum DaemonRuntime {
    /// Runs the daemon in the foreground; returns when it was told to stop. Throws when it
    /// cannot start (another daemon runs, the socket path is taken, the store cannot open).
    public static func run(paths: DaemonPaths, webSocket: URL, operationTimeout: Double, logger: Logger) throws {
        // Every file it creates (the store and its WAL, the PID file) is the user's alone.
        umask(0o077)
        try paths.createHome()
        // One daemon per home: the lock is held as long as the process lives (the kernel
        // drops it on any exit, SIGKILL included), so two starting at once cannot both
        // take the socket path.
        let lock = open(paths.lockFile, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0, flock(lock, LOCK_EX | LOCK_NB) == 0 else {
            throw DaemonError("the daemon already runs (it holds \(paths.lockFile))")
        }
        defer { close(lock) }
        try claimSocketPath(paths)
        let store = try OperationsStore(path: paths.database)
        let core = try DaemonCore(store: store, operationTimeout: operationTimeout)

        // SIGTERM / SIGINT end the daemon; the default action would leave the socket file.
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        let stop = DispatchSemaphore(value: 0)
        let sources = [SIGTERM, SIGINT].map { number in
            let source = DispatchSource.makeSignalSource(signal: number)
            source.setEventHandler { stop.signal() }
            source.resume()
            return source
        }

        let listener = try UnixSocket.listen(path: paths.socket)
        try "\(getpid())\n".write(toFile: paths.pidFile, atomically: true, encoding: .utf8)
        let link = BoundaryLink(core: core, url: webSocket, logger: logger)
        let server = DaemonServer(core: core, listener: listener, logger: logger) {
            ["socket": .string(paths.socket), "boundary": .string(webSocket.absoluteString),
             "operations_file": .string(paths.database), "log": .string(paths.log)]
        }
        logger.info("daemon started", metadata: ["pid": "\(getpid())", "socket": "\(paths.socket)", "boundary": "\(webSocket)",
                                                 "pending": "\(core.status.pending)"])
        Thread.detachNewThread { link.run() }
        Thread.detachNewThread { server.acceptLoop() }

        stop.wait()
        sources.forEach { $0.cancel() }
        logger.info("daemon stopping", metadata: ["pending": "\(core.status.pending)"])
        link.stop()
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        unlink(paths.socket)
        if (try? String(contentsOfFile: paths.pidFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            == String(getpid()) {
            unlink(paths.pidFile)
        }
    }

    /// Makes sure the socket path is free: a daemon that answers there is running already; a
    /// socket nobody listens on is left by a killed daemon and is removed (only when
    /// `removingStale`: the daemon does it under its lock; `start` only checks, since a socket
    /// it saw stale may be a new daemon's by the time it would remove it); anything else at
    /// that path is not ours to remove.
    public static func claimSocketPath(_ paths: DaemonPaths, removingStale: Bool = true) throws {
        switch UnixSocket.connect(path: paths.socket) {
        case .success(let fd):
            let connection = LineConnection(fd: fd, receiveTimeout: 2)
            connection.write(#"{"request":"status"}"#)
            if let line = try? connection.readLine(), line.contains(#""type":"status""#) {
                let pid = (try? JSONValue.parse(Array(line.utf8)))?["pid"].flatMap { value -> Int? in
                    if case .number(let n, _) = value { return Int(n) }
                    return nil
                }
                throw DaemonError("the daemon already runs (pid \(pid.map(String.init) ?? "?"), socket \(paths.socket))")
            }
            throw DaemonError("the socket path \(paths.socket) is taken by another program; stop it or set STEGA_HOME")
        case .failure(.missing):
            return
        case .failure(.refused):
            guard removingStale else { return }
            guard unlink(paths.socket) == 0 || errno == ENOENT else {
                throw DaemonError("cannot remove the stale socket \(paths.socket): \(String(cString: strerror(errno)))")
            }
        case .failure(.notSocket):
            throw DaemonError("the socket path \(paths.socket) is taken by a file that is not a socket; remove it or set STEGA_HOME")
        case .failure(.denied):
            throw DaemonError("the socket path \(paths.socket) belongs to another user")
        case .failure(.other(let reason)):
            throw DaemonError("cannot use the socket path \(paths.socket): \(reason)")
        }
    }
}

/// The one WebSocket to the boundary: connects, subscribes to every pending operation, feeds
/// what comes to the core, and reconnects with back-off (0.1 s doubling to 2 s, with jitter)
/// when the boundary goes away. All sending happens on its thread (the client is not shared).
final class BoundaryLink: Sendable {
    let core: DaemonCore
    let url: URL
    let logger: Logger
    private let stopping = Atomic<Bool>(false)
    /// How long a read waits before the link sends what was queued and sweeps time-outs.
    static let tick = 0.1

    init(core: DaemonCore, url: URL, logger: Logger) {
        self.core = core
        self.url = url
        self.logger = logger
    }

    func stop() { stopping.store(true, ordering: .relaxed) }

    func run() {
        var backoff = 0.1
        var lastSweep = Date.distantPast
        var failures = 0
        while !stopping.load(ordering: .relaxed) {
            do {
                let client = try WebSocketClient(url: url, timeout: 5)
                client.setReceiveTimeout(Self.tick)
                let subscriptions = core.connected()
                for message in subscriptions { try client.send(message) }
                logger.info("connected to the boundary", metadata: ["url": "\(url)", "resubscribed": "\(subscriptions.count)"])
                backoff = 0.1
                failures = 0
                defer { client.close() }
                while !stopping.load(ordering: .relaxed) {
                    for message in core.takeOutgoing() { try client.send(message) }
                    switch try client.next() {
                    case .text(let text):
                        if let note = core.received(text) { logger.warning("\(note)") }
                    case .closed:
                        throw DaemonError("the boundary closed the connection")
                    case .timedOut:
                        break
                    }
                    if Date().timeIntervalSince(lastSweep) >= 1 {
                        core.sweep()
                        lastSweep = Date()
                    }
                }
            } catch {
                core.disconnected("\(error)")
                // The first failure and then one in 50 (about every 100 s) go to the log.
                if failures % 50 == 0 {
                    logger.warning("boundary unreachable; retrying", metadata: ["url": "\(url)", "error": "\(error)"])
                }
                failures += 1
                core.sweep()
                lastSweep = Date()
                Thread.sleep(forTimeInterval: backoff * Double.random(in: 0.8...1.2))
                backoff = min(backoff * 2, 2)
            }
        }
    }
}
