import Foundation
import Handoff
import Logging
import Synchronization

/// An HTTP server over libmicrohttpd: a pool of MHD threads reads requests, and each
/// request is answered by the `Router` in a Swift task. The task starts on the MHD thread
/// and runs there up to its first suspension (see `InlineExecutor`); a request answered by
/// then goes out at once, any other waits with its connection suspended, so a handler that
/// awaits never blocks MHD's threads (one that computes long before its first `await` would).
///
/// ```swift
/// let daemon = HTTPDaemon(router: router, host: "127.0.0.1", port: 8081)
/// try daemon.start()
/// ...
/// daemon.stop(drainFor: 5)
/// ```
public final class HTTPDaemon: Sendable {
    /// The routes served.
    public let router: Router
    /// Requests with a larger body get 413.
    public let maxBodySize: Int
    private let host: String
    private let port: Int
    private let threads: Int
    private let handle = Mutex<MHDHandle?>(nil)
    private let active = Atomic<Int>(0)
    private let requestsStarted = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    /// Suspended connections by context, so a stop can answer them; `nil` once stopped.
    private let suspendedConnections = Mutex<[ObjectIdentifier: (RequestContext, UInt)]?>([:])
    /// Streams being sent, so a stop can end them; `nil` once stopped. Shares the lock
    /// discipline of `suspendedConnections`: resumes happen under it.
    private let streams = Mutex<[ObjectIdentifier: ResponseStream]?>([:])
    /// Open WebSocket connections by upgrade handle.
    private let webSockets = Mutex<[UInt: WebSocket]>([:])
    private let logger: Logger

    public init(router: Router, host: String = "127.0.0.1", port: Int, threads: Int = 2,
                maxBodySize: Int = 8 * 1024 * 1024, logger: Logger = Logger(label: "stega.http")) {
        self.router = router
        self.host = host
        self.port = port
        self.threads = max(1, threads)
        self.maxBodySize = maxBodySize
        self.logger = logger
    }

    /// Starts listening; returns the bound port (useful with port 0).
    @discardableResult
    public func start() throws -> Int {
        try handle.withLock { handle in
            if let handle { return handle.boundPort }
            let started = try MHDHandle.start(daemon: self, host: host, port: port, threads: threads)
            handle = started
            logger.info("listening", metadata: ["http.host": "\(host)", "http.port": "\(started.boundPort)"])
            return started.boundPort
        }
    }

    /// The bound port, or 0 when not started.
    public var boundPort: Int { handle.withLock { $0?.boundPort ?? 0 } }

    /// Requests being read or answered now.
    public var activeRequests: Int { active.load(ordering: .relaxed) }

    /// Requests started since the daemon was made: an activity signal.
    public var requestCount: Int { requestsStarted.load(ordering: .relaxed) }

    /// Stops accepting connections and new requests (503 on kept-alive connections), lets
    /// requests in flight finish for up to `drainFor` seconds, answers any still running
    /// with 503, then stops the daemon.
    public func stop(drainFor seconds: Double = 5) {
        guard let current = handle.withLock({ h -> MHDHandle? in defer { h = nil }; return h }) else { return }
        stopping.store(true, ordering: .sequentiallyConsistent)
        let listener = current.quiesce()
        // Streams and WebSockets never end by themselves: end them, so their connections drain too.
        let open = streams.withLock { $0.map { Array($0.values) } ?? [] }
        open.forEach { $0.finish() }
        webSockets.withLock { Array($0.values) }.forEach { $0.close(WebSocketCloseCode.goingAway, reason: "server shutting down") }
        let socketsDeadline = Date().addingTimeInterval(3)
        while !webSockets.withLock({ $0.isEmpty }), Date() < socketsDeadline { usleep(5_000) }
        waitForIdle(seconds)
        streams.withLock { $0 = nil }
        // Handlers still running: answer them now; their late results are dropped.
        let left = suspendedConnections.withLock { registry -> Int in
            let pending = registry ?? [:]
            for (context, connection) in pending.values {
                if context.settle(HTTPResponse.error(HTTPError(503, "shutting_down", "the server is shutting down"))) {
                    MHDHandle.resume(connection: connection)
                }
            }
            registry = nil
            return pending.count
        }
        if left > 0 { waitForIdle(1) }
        // MHD aborts when stopped with a connection still suspended: never risk it.
        if active.load(ordering: .sequentiallyConsistent) == 0 {
            current.stop()
        } else {
            logger.warning("requests still in flight; leaving the daemon to the process exit")
        }
        MHDHandle.close(socket: listener)
        logger.info("stopped listening", metadata: ["http.port": "\(port)", "http.cut_short": "\(left)"])
    }

    private func waitForIdle(_ seconds: Double) {
        let deadline = Date().addingTimeInterval(seconds)
        while active.load(ordering: .sequentiallyConsistent) > 0, Date() < deadline { usleep(2_000) }
    }

    var isStopping: Bool { stopping.load(ordering: .sequentiallyConsistent) }
    func requestStarted() {
        active.add(1, ordering: .sequentiallyConsistent)
        requestsStarted.add(1, ordering: .relaxed)
    }
    func requestFinished() { active.subtract(1, ordering: .sequentiallyConsistent) }

    /// Registers a stream queued on `connection`; its writes resume the connection while
    /// the daemon runs.
    func streamStarted(_ stream: ResponseStream, connection: UInt) {
        stream.state.withLock { s in
            s.resume = { [weak self] in
                guard let self else { return }
                self.streams.withLock { registry in
                    // Under the registry's lock: after a stop (nil), the connection is gone.
                    guard registry?[ObjectIdentifier(stream)] != nil else { return }
                    MHDHandle.resume(connection: connection)
                }
            }
        }
        streams.withLock { $0?[ObjectIdentifier(stream)] = stream }
    }

    func streamEnded(_ stream: ResponseStream) {
        streams.withLock { _ = $0?.removeValue(forKey: ObjectIdentifier(stream)) }
    }

    func webSocketStarted(_ socket: WebSocket, handle: UInt) {
        webSockets.withLock { $0[handle] = socket }
    }

    func webSocketEnded(_ handle: UInt) {
        webSockets.withLock { _ = $0.removeValue(forKey: handle) }
    }

    /// Open WebSocket connections.
    public var webSocketCount: Int { webSockets.withLock { $0.count } }

    /// Starts the router on the request (see `InlineExecutor`): it runs on the calling
    /// MHD thread up to its first suspension. Returns the response when it is there already;
    /// otherwise the connection is suspended and registered, and ``resume(_:with:)`` resumes it.
    func handOff(_ context: RequestContext, connection: UInt) -> HTTPResponse? {
        let request = context.request
        let matched = context.matched
        InlineExecutor.inline {
            Task(executorPreference: InlineExecutor.shared) {
                let response = await self.router.respond(to: request, matched: matched)
                self.resume(context, with: response)
            }
        }
        return suspendedConnections.withLock { registry -> HTTPResponse? in
            if let response = context.response.withLock({ $0 }) { return response }
            guard registry != nil else {
                return .error(HTTPError(503, "shutting_down", "the server is shutting down"))
            }
            // Under the registry's lock, as `resume` and `stop` take it: neither can resume
            // the connection before it is suspended.
            MHDHandle.suspend(connection: connection)
            registry?[ObjectIdentifier(context)] = (context, connection)
            return nil
        }
    }

    /// Stores the handler's response and resumes the connection, unless a stop answered it.
    /// Not suspended yet (the handler finished while ``handOff(_:connection:)`` ran), the
    /// response is only stored: the access handler sends it.
    func resume(_ context: RequestContext, with response: HTTPResponse) {
        suspendedConnections.withLock { registry in
            // Under the registry's lock, so a stop cannot run between the check and the resume;
            // after a stop the registry is nil and the connection is not touched again.
            guard registry != nil else { return }
            if let entry = registry?.removeValue(forKey: ObjectIdentifier(context)) {
                if context.settle(response) { MHDHandle.resume(connection: entry.1) }
            } else {
                _ = context.settle(response)
            }
        }
    }
}
