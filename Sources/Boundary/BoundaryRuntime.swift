import AMQPTransport
import EventCatalog
import Foundation
import HTTPServer
import Logging
import MessageBus
import ServiceLifecycle
import ServiceRuntime

/// Runs the boundary: consumes every routing key of the catalog on a queue of its own
/// (``BoundaryRuntime/Settings/queue(_:)``), tracks operations by correlation id, and serves
/// `GET /operations/{id}`, its Server-Sent Events and `GET /ws` on port 8080.
public enum BoundaryRuntime {
    /// What the boundary reads beyond ``ServiceConfig``.
    struct Settings {
        var operationTimeout: Int
        var trackerBytes: Int
        var limits = WebSocketLimits()
        /// The console's page and its reads of the apis (STEGA_RETURNS_URL, STEGA_CORRELATIONS_URL).
        var console: ConsoleRoutes
        /// `STEGA_BOUNDARY_ID`: names the boundary's queue; one per replica.
        var id: String?
        var queueExpiresSeconds: Int

        /// The most events the queue keeps for a boundary that is away (the oldest go first).
        static let queueMaxLength = 100_000

        init(_ environment: Environment) throws {
            id = try environment.string("STEGA_BOUNDARY_ID")
            if let id, id.utf8.count > 200 || !id.allSatisfy(Self.fitsQueueName) {
                throw ConfigError("STEGA_BOUNDARY_ID must be 1 to 200 of A-Z a-z 0-9 . _ -, got \(id)")
            }
            queueExpiresSeconds = try environment.int("STEGA_BOUNDARY_QUEUE_EXPIRES_S", default: 600, range: 10...604_800)
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

        /// The boundary needs every event, not a share, so it never reads `boundary.events`
        /// with others. Durable mode: its own queue `boundary.<id>.events`, which outlives a
        /// restart — the events published while the boundary is away (a restart, a deploy)
        /// wait there, and operations pending across the restart still resolve, for the
        /// boundary and for the CLI daemons that resubscribe. The id is `STEGA_BOUNDARY_ID`,
        /// else `<hostname>-<port>` (the same after a restart on one host; two replicas never
        /// share it). The broker deletes the queue once no boundary has read it for
        /// `STEGA_BOUNDARY_QUEUE_EXPIRES_S` (default 10 minutes). Transient mode: the seed's
        /// server-named queue, gone with the connection.
        func queue(_ config: ServiceConfig) -> AMQPConsumer.QueueSpec {
            let id = self.id ?? "\(Self.hostname())-\(config.httpPort)"
            return AMQPConsumer.QueueSpec(
                service: "boundary", mode: config.queueMode, queueType: config.queueType,
                instance: .init(name: "boundary.\(id).events", expiresMs: queueExpiresSeconds * 1000,
                                maxLength: Self.queueMaxLength))
        }

        /// This host's name, with what a queue name should not hold replaced by `-`.
        static func hostname() -> String {
            var buffer = [CChar](repeating: 0, count: 256)
            guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
            let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let clean = String(name.prefix(100).map { fitsQueueName($0) ? $0 : "-" })
            return clean.isEmpty ? "localhost" : clean
        }

        /// What the boundary's id may hold: ASCII letters and digits, `.`, `_`, `-`.
        static func fitsQueueName(_ character: Character) -> Bool {
            character.isASCII && (character.isLetter || character.isNumber || "._-".contains(character))
        }
    }

    /// Runs until SIGTERM or SIGINT; returns the process exit code.
    public static func run() async -> Int32 {
        await ProcessRuntime.run(process: "boundary", service: "boundary", settings: Settings.init) { config, settings, logger in
            let tracker = OperationTracker(timeout: TimeInterval(settings.operationTimeout), maxBytes: settings.trackerBytes)
            let queue = settings.queue(config)
            let consumer = AMQPConsumer(settings: config.amqp, queue: queue,
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
                           "amqp.queue": "\(queue.declaredName.isEmpty ? "(server-named)" : queue.declaredName)",
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
