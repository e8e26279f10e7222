import Foundation
import HTTPServer
import Logging
import ServiceLifecycle

/// One process's life, the same for every executable: glibc's arenas limited, configuration
/// read (an error exits with 2), logging and metrics bootstrapped, the HTTP daemon with
/// health and metrics, memory given back after bursts (``MemoryTrimmer``), and the process's
/// services in a `ServiceGroup` until SIGTERM or SIGINT.
public enum ProcessRuntime {
    /// What a process runs, from its configuration.
    public struct Plan {
        /// Its routes; health, metrics and the write token are added here.
        public var router: Router
        /// Services started before the HTTP daemon and stopped after it (the outbox relay
        /// flushes last).
        public var services: [any Service]
        /// Services started after the HTTP daemon and stopped first (consumers: no event is
        /// taken once shutdown began).
        public var consumers: [any Service]
        public var checks: [ReadinessCheck]
        /// A count that moves while the services work (HTTP requests are counted here).
        public var activity: @Sendable () -> Int
        /// Caches to drop once a burst is over.
        public var release: @Sendable () -> Void
        /// Runs once the group has stopped.
        public var stopped: @Sendable () -> Void
        /// Logged with `starting`.
        public var metadata: Logger.Metadata

        public init(router: Router, services: [any Service], consumers: [any Service] = [], checks: [ReadinessCheck],
                    activity: @escaping @Sendable () -> Int = { 0 }, release: @escaping @Sendable () -> Void = {},
                    stopped: @escaping @Sendable () -> Void = {}, metadata: Logger.Metadata = [:]) {
            self.router = router
            self.services = services
            self.consumers = consumers
            self.checks = checks
            self.activity = activity
            self.release = release
            self.stopped = stopped
            self.metadata = metadata
        }
    }

    /// Runs `process` of `service`: `settings` reads what the process needs beyond
    /// ``ServiceConfig``, `build` makes its plan. Returns the exit code.
    public static func run<Settings>(process: String, service: String,
                                     settings: (Environment) throws -> Settings,
                                     build: (ServiceConfig, Settings, Logger) async throws -> Plan) async -> Int32 {
        MemorySetup.limitArenas()
        let environment = Environment()
        let config: ServiceConfig
        let extra: Settings
        do {
            config = try ServiceConfig(service: service, process: process, environment: environment)
            extra = try settings(environment)
        } catch {
            FileHandle.standardError.write(Data("\(process): configuration error: \(error)\n".utf8))
            return 2
        }
        LoggingSetup.bootstrap(process: process, level: config.logLevel, format: config.logFormat)
        MetricsSetup.bootstrap()
        var logger = Logger(label: "stega.\(process)")
        logger.logLevel = config.logLevel
        do {
            var plan = try await build(config, extra, logger)
            HealthRoutes.add(to: &plan.router, process: process, checks: plan.checks)
            MetricsSetup.addRoute(to: &plan.router)
            plan.router.writeToken = config.apiToken
            let daemon = HTTPDaemon(router: plan.router, host: config.httpHost, port: config.httpPort,
                                    threads: config.httpThreads, maxBodySize: config.maxBodyBytes, logger: logger)
            let activity = plan.activity
            let trimmer = MemoryTrimmer(activity: { daemon.requestCount + activity() }, release: plan.release)
            let services: [any Service] = plan.services + [HTTPService(daemon: daemon), trimmer] + plan.consumers
            logger.info("starting", metadata: plan.metadata)
            let group = ServiceGroup(configuration: .init(
                services: services.map { .init(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
            plan.services.removeAll()
            plan.consumers.removeAll()
            try await group.run()
            plan.stopped()
            logger.info("stopped")
            return 0
        } catch {
            logger.critical("failed", metadata: ["error": "\(error)"])
            return 1
        }
    }
}
