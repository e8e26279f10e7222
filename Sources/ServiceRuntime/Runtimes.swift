import AMQPTransport
import Logging
import MessageBus

/// Runs `<service>-api`: REST over libmicrohttpd, command handlers on the bus, events
/// through the outbox and its relay to RabbitMQ.
public enum APIRuntime {
    /// Runs until SIGTERM or SIGINT; returns the process exit code.
    public static func run<M: ServiceModule>(_ module: M.Type) async -> Int32 {
        await ProcessRuntime.run(process: "\(M.name)-api", service: M.name, settings: { _ in () }) { config, _, logger in
            let database = try ServiceAssembly<M>.openDatabase(config, logger: logger)
            let publisher = AMQPRuntime.publisher(config, logger)
            let api = try ServiceAssembly<M>.api(database: database, publisher: publisher, logger: logger)
            return AMQPRuntime.plan(api, publisher: publisher, config: config)
        }
    }
}

/// Runs `<service>-worker`: consumes the routing keys of its event handlers and dispatches
/// each event through the same bus; over HTTP it serves health and metrics.
public enum WorkerRuntime {
    /// Runs until SIGTERM or SIGINT; returns the process exit code.
    public static func run<M: ServiceModule>(_ module: M.Type) async -> Int32 {
        await ProcessRuntime.run(process: "\(M.name)-worker", service: M.name, settings: { _ in () }) { config, _, logger in
            let database = try ServiceAssembly<M>.openDatabase(config, logger: logger)
            let publisher = AMQPRuntime.publisher(config, logger)
            let worker = try await ServiceAssembly<M>.worker(
                database: database, publisher: publisher,
                policy: config.retryPolicy(failureEvent: M.operationFailedEvent), logger: logger
            ) { bindings, policy in
                AMQPConsumer(settings: config.amqp, queue: config.queueSpec(policy: policy, singleActiveConsumer: M.singleActiveConsumer), bindings: bindings, logger: logger)
            }
            return AMQPRuntime.plan(worker, publisher: publisher, config: config)
        }
    }
}

/// What the api and the worker share over AMQP.
enum AMQPRuntime {
    /// The relay's publisher: confirms and persistent messages in durable mode.
    static func publisher(_ config: ServiceConfig, _ logger: Logger) -> AMQPPublisher {
        let durable = config.queueMode == .durable
        return AMQPPublisher(settings: config.amqp, confirms: durable, persistent: durable, queueType: config.queueType,
                             logger: logger)
    }

    static func plan<M>(_ assembly: ServiceAssembly<M>, publisher: AMQPPublisher,
                        config: ServiceConfig) -> ProcessRuntime.Plan {
        let database = assembly.database
        var checks = [
            ReadinessCheck("broker") { publisher.isConnected },
            ReadinessCheck("store") { await database.isReadable() },
        ]
        if let consumer = assembly.consumer { checks.append(ReadinessCheck("consumer") { consumer.isReady }) }
        return ProcessRuntime.Plan(
            router: assembly.router, services: [assembly.relay], consumers: assembly.consumer.map { [$0] } ?? [], checks: checks,
            activity: assembly.activity, release: { database.releaseMemory() },
            stopped: {
                publisher.shutdown()
                publisher.waitUntilFinished(timeout: 5)
                database.close()
            },
            metadata: [
                "amqp.url": "\(config.amqp.nodes.map(\.description).joined(separator: ","))", "amqp.exchange": "\(config.amqp.exchange)",
                "amqp.exchange_type": "\(config.amqp.exchangeType)", "amqp.queue_mode": "\(config.queueMode.rawValue)",
                "store": "\(database.location)",
            ])
    }
}
