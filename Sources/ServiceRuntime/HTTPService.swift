import HTTPServer
import Logging
import ServiceLifecycle

/// Runs an `HTTPDaemon` as a service: listens on start, and on graceful shutdown stops
/// accepting and lets requests in flight finish.
public struct HTTPService: Service {
    public let daemon: HTTPDaemon

    public init(daemon: HTTPDaemon) { self.daemon = daemon }

    public func run() async throws {
        try daemon.start()
        // Returns on graceful shutdown (or throws on cancellation); either way, drain and stop.
        try? await gracefulShutdown()
        daemon.stop(drainFor: 5)
    }
}
