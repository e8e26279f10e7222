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
    /// What the boundary reads beyond ``ServiceConfig``.
    struct Settings {
        var operationTimeout: Int
        var trackerBytes: Int
        var limits = WebSocketLimits()
        /// The console's page and its reads of the apis (STEGA_RETURNS_URL, STEGA_CORRELATIONS_URL).
        var console: ConsoleRoutes

        init(_ environment: Environment) throws {
            console = try ConsoleRoutes(environment: [
                "STEGA_RETURNS_URL": try environment.string("STEGA_RETURNS_URL") ?? "",
                "STEGA_CORRELATIONS_URL": try environment.string("STEGA_CORRELATIONS_URL") ?? "",
            ])
            operationTimeout = try environment.int("STEGA_OPERATION_TIMEOUT_S", default: 30, range: 1...86_400)
            trackerBytes = try environment.int("STEGA_OPERATION_MAX_BYTES", default: 64 << 20, range: (1 << 20)...(1 << 40))
            limits.maxClients = try environment.int("STEGA_WS_MAX_CLIENTS", default: limits.maxClients, range: 1...100_000)
            limits.pingInterval = Double(try environment.int("STEGA_WS_PING_INTERVAL_S", default: Int(limits.pingInterval),
                                                             range: 1...3_600))
        }
    }

    /// Runs until SIGTERM or SIGINT; returns the process exit code.
    public static func run() async -> Int32 {
        await ProcessRuntime.run(process: "boundary", service: "boundary", settings: Settings.init) { config, settings, logger in
            let tracker = OperationTracker(timeout: TimeInterval(settings.operationTimeout), maxBytes: settings.trackerBytes)
            let consumer = AMQPConsumer(settings: config.amqp, queue: .init(service: "boundary", mode: .transient),
                                        bindings: Catalog.eventTypes.map { $0.routingKey }, logger: logger)
            let hub = WebSocketHub(tracker: tracker)
            var router = Router(logger: logger)
            BoundaryRoutes(tracker: tracker).add(to: &router)
            router.webSocket("/ws", limits: settings.limits) { _ in hub }
            OpenAPIRoute.add(to: &router, document: BoundaryRoutes.openAPIDocument)
            settings.console.add(to: &router)
            let tracking = TrackingConsumer(consumer: consumer, tracker: tracker, hub: hub, logger: logger)
            return ProcessRuntime.Plan(
                router: router, services: [Sweeper(tracker: tracker)], consumers: [tracking],
                checks: [ReadinessCheck("broker") { consumer.isConnected }],
                activity: { tracking.seen.value },
                metadata: ["amqp.url": "\(config.amqp.nodes.map(\.description).joined(separator: ","))", "operation_timeout_s": "\(settings.operationTimeout)",
                           "ws.max_clients": "\(settings.limits.maxClients)",
                           "console.returns_url": "\(settings.console.returns)",
                           "console.correlations_url": "\(settings.console.correlations)"])
        }
    }
}

/// Feeds every event to the tracker.
struct TrackingConsumer: Service {
    let consumer: AMQPConsumer
    let tracker: OperationTracker
    let hub: WebSocketHub
    let logger: Logger
    /// Deliveries taken since start: an activity signal.
    let seen = ActivityCount()

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            try await consumer.run { delivery in
                seen.increment()
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
