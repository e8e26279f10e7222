import Foundation
import Logging
import Synchronization

/// An HTTP server over libmicrohttpd: a pool of MHD threads reads requests, and each
/// request is answered by the `Router` in a Swift task while its connection is suspended,
/// so slow handlers never block MHD's threads.
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

    /// Stops accepting connections, lets requests in flight finish for up to `drainFor`
    /// seconds, then stops the daemon.
    public func stop(drainFor seconds: Double = 5) {
        guard let current = handle.withLock({ h -> MHDHandle? in defer { h = nil }; return h }) else { return }
        current.quiesce()
        let deadline = Date().addingTimeInterval(seconds)
        while active.load(ordering: .relaxed) > 0, Date() < deadline { usleep(2_000) }
        current.stop()
        logger.info("stopped listening", metadata: ["http.port": "\(port)"])
    }

    func requestStarted() { active.add(1, ordering: .relaxed) }
    func requestFinished() { active.subtract(1, ordering: .relaxed) }
}
