import AMQPTransport
import Foundation
import HTTPServer
import Logging
import MessageBus
import ServiceLifecycle

/// Runs `<service>-api`: REST over libmicrohttpd, command handlers on the bus, events
/// through the outbox and its relay to RabbitMQ.
public enum APIRuntime {
    /// Runs until SIGTERM or SIGINT; returns the process exit code.
    public static func run<M: ServiceModule>(_ module: M.Type) async -> Int32 {
        await RuntimeShared.run(module, process: "\(M.name)-api") { parts in
            var registry = HandlerRegistry()
            try parts.module.registerCommandHandlers(&registry)
            let bus = MessageBus(appId: M.name, registry: registry,
                                 publisher: OutboxPublisher(database: parts.database), logger: parts.logger)
            var router = Router(logger: parts.logger)
            parts.module.addRoutes(to: &router, bus: bus)
            OpenAPIRoute.add(to: &router, document: M.openAPIDocument)
            return (router, [], { 0 })
        }
    }
}

/// Runs `<service>-worker`: consumes the routing keys of its event handlers and dispatches
/// each event through the same bus; serves only health (and later metrics) over HTTP.
public enum WorkerRuntime {
    /// Runs until SIGTERM or SIGINT; returns the process exit code.
    public static func run<M: ServiceModule>(_ module: M.Type) async -> Int32 {
        await RuntimeShared.run(module, process: "\(M.name)-worker") { parts in
            var registry = HandlerRegistry()
            try parts.module.registerEventHandlers(&registry)
            let bus = MessageBus(appId: M.name, registry: registry,
                                 publisher: OutboxPublisher(database: parts.database), logger: parts.logger)
            var queue = parts.config.queueSpec
            if M.eventHandlersRunConcurrently { queue.concurrency = Int(queue.prefetch) }
            let consumer = AMQPConsumer(
                settings: parts.config.amqp,
                queue: queue,
                bindings: bus.routingKeys, logger: parts.logger)
            let service = ConsumerService(
                consumer: consumer, bus: bus, logger: parts.logger,
                maxAttempts: parts.config.queueMode == .durable ? parts.config.retryAttempts : 1,
                failures: OutboxPublisher(database: parts.database))
            let check = ReadinessCheck("consumer") { consumer.isConnected }
            return (Router(logger: parts.logger), [(service, check)], { service.handledCount })
        }
    }
}

/// What both runtimes build before their own parts.
struct RuntimeParts<M: ServiceModule> {
    let config: ServiceConfig
    let logger: Logger
    let database: ServiceDatabase
    let module: M
}

enum RuntimeShared {
    /// The process's router, its extra services with their readiness checks, and a count that
    /// moves with their work (for ``MemoryTrimmer``).
    typealias Build<M: ServiceModule> = (RuntimeParts<M>) throws
        -> (Router, [(any Service, ReadinessCheck)], @Sendable () -> Int)

    static func run<M: ServiceModule>(_ type: M.Type, process: String, build: Build<M>) async -> Int32 {
        MemorySetup.limitArenas()
        let config: ServiceConfig
        do {
            config = try ServiceConfig(service: M.name, process: process)
        } catch {
            FileHandle.standardError.write(Data("\(process): configuration error: \(error)\n".utf8))
            return 2
        }
        LoggingSetup.bootstrap(process: process, level: config.logLevel, format: config.logFormat)
        MetricsSetup.bootstrap()
        var logger = Logger(label: "stega.\(process)")
        logger.logLevel = config.logLevel
        do {
            let database = try ServiceDatabase(path: config.databasePath, migrations: M.migrate)
            let parts = RuntimeParts(config: config, logger: logger, database: database,
                                     module: M(database: database, logger: logger))
            let built = try build(parts)
            var (router, extra) = (built.0, built.1)
            let activity = built.2

            let durable = config.queueMode == .durable
            let publisher = AMQPPublisher(settings: config.amqp, confirms: durable, persistent: durable,
                                          logger: logger)
            let relay = OutboxRelay(database: database, publisher: publisher, logger: logger)
            var checks = [
                ReadinessCheck("broker") { publisher.isConnected },
                ReadinessCheck("store") { await database.isReadable() },
            ]
            checks.append(contentsOf: extra.map(\.1))
            HealthRoutes.add(to: &router, process: process, checks: checks)
            MetricsSetup.addRoute(to: &router)
            router.writeToken = config.apiToken
            let daemon = HTTPDaemon(router: router, host: config.httpHost, port: config.httpPort,
                                    threads: config.httpThreads, maxBodySize: config.maxBodyBytes, logger: logger)
            // Shutdown runs in reverse: consumer first, then HTTP, then the relay flushes.
            // Memory back to the system once a burst of work (requests, publishing, events) is over.
            let trimmer = MemoryTrimmer(activity: { daemon.requestCount + relay.batchCount + activity() },
                                        release: { database.releaseMemory() })
            let services: [any Service] = [relay, HTTPService(daemon: daemon), trimmer] + extra.map(\.0)
            logger.info("starting", metadata: [
                "amqp.url": "\(config.amqp.url)", "amqp.exchange": "\(config.amqp.exchange)",
                "amqp.exchange_type": "\(config.amqp.exchangeType)", "amqp.queue_mode": "\(config.queueMode.rawValue)",
                "store.path": "\(config.databasePath)",
            ])
            let group = ServiceGroup(configuration: .init(
                services: services.map { .init(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
            extra.removeAll()
            try await group.run()
            publisher.shutdown()
            publisher.waitUntilFinished(timeout: 5)
            logger.info("stopped")
            return 0
        } catch {
            logger.critical("failed", metadata: ["error": "\(error)"])
            return 1
        }
    }
}
