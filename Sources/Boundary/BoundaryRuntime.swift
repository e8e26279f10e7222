import AMQPTransport
import EventCatalog
import Foundation
import HTTPServer
import Logging
import MessageBus
import ServiceLifecycle
import ServiceRuntime

/// Runs the boundary: consumes every routing key of the catalog in the seed's transient
/// mode (it only cares about new events), tracks operations by correlation id, and serves
/// `GET /operations/{id}`, its Server-Sent Events and `GET /ws` on port 8080.
public enum BoundaryRuntime {
    /// Runs until SIGTERM or SIGINT; returns the process exit code.
    public static func run() async -> Int32 {
        let environment = Environment()
        let config: ServiceConfig
        let timeout: Int
        let trackerBytes: Int
        var limits = WebSocketLimits()
        do {
            config = try ServiceConfig(service: "boundary", process: "boundary", environment: environment)
            timeout = try environment.int("STEGA_OPERATION_TIMEOUT_S", default: 30, range: 1...86_400)
            trackerBytes = try environment.int("STEGA_OPERATION_MAX_BYTES", default: 64 << 20, range: (1 << 20)...(1 << 40))
            limits.maxClients = try environment.int("STEGA_WS_MAX_CLIENTS", default: limits.maxClients, range: 1...100_000)
            limits.pingInterval = Double(try environment.int("STEGA_WS_PING_INTERVAL_S", default: Int(limits.pingInterval),
                                                             range: 1...3_600))
        } catch {
            FileHandle.standardError.write(Data("boundary: configuration error: \(error)\n".utf8))
            return 2
        }
        LoggingSetup.bootstrap(process: "boundary", level: config.logLevel, format: config.logFormat)
        MetricsSetup.bootstrap()
        var logger = Logger(label: "stega.boundary")
        logger.logLevel = config.logLevel
        let tracker = OperationTracker(timeout: TimeInterval(timeout), maxBytes: trackerBytes)
        let consumer = AMQPConsumer(settings: config.amqp, queue: .init(service: "boundary", mode: .transient),
                                    bindings: Catalog.eventTypes.map { $0.routingKey }, logger: logger)
        let hub = WebSocketHub(tracker: tracker)
        var router = Router(logger: logger)
        BoundaryRoutes(tracker: tracker).add(to: &router)
        router.webSocket("/ws", limits: limits) { _ in hub }
        OpenAPIRoute.add(to: &router, document: BoundaryRoutes.openAPIDocument)
        HealthRoutes.add(to: &router, process: "boundary", checks: [ReadinessCheck("broker") { consumer.isConnected }])
        MetricsSetup.addRoute(to: &router)
        let daemon = HTTPDaemon(router: router, host: config.httpHost, port: config.httpPort,
                                threads: config.httpThreads, maxBodySize: config.maxBodyBytes, logger: logger)
        let services: [any Service] = [
            Sweeper(tracker: tracker),
            HTTPService(daemon: daemon),
            TrackingConsumer(consumer: consumer, tracker: tracker, hub: hub, logger: logger),
        ]
        logger.info("starting", metadata: ["amqp.url": "\(config.amqp.url)", "operation_timeout_s": "\(timeout)",
                                           "ws.max_clients": "\(limits.maxClients)"])
        do {
            try await ServiceGroup(configuration: .init(services: services.map { .init(service: $0) },
                                                        gracefulShutdownSignals: [.sigterm, .sigint],
                                                        logger: logger)).run()
            logger.info("stopped")
            return 0
        } catch {
            logger.critical("failed", metadata: ["error": "\(error)"])
            return 1
        }
    }
}

/// Feeds every event to the tracker.
struct TrackingConsumer: Service {
    let consumer: AMQPConsumer
    let tracker: OperationTracker
    let hub: WebSocketHub
    let logger: Logger

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            try await consumer.run { delivery in
                // A redelivered event (an id seen before) goes to no one twice.
                if let envelope = delivery.envelope, tracker.record(envelope) {
                    hub.broadcast(envelope)
                    logger.debug("event seen", metadata: [
                        "amqp.routing_key": "\(envelope.routingKey)", "bus.correlation_id": "\(envelope.correlationId ?? "")",
                    ])
                }
                return .ack
            }
        }
    }
}

/// Times out overdue operations once a second.
struct Sweeper: Service {
    let tracker: OperationTracker

    func run() async throws {
        await cancelWhenGracefulShutdown {
            // Cancelled on shutdown: end quietly (a thrown CancellationError would fail the group).
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                tracker.sweep()
            }
        }
    }
}
