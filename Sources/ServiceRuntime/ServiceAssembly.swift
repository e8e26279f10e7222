import EventCatalog
import HTTPServer
import Logging
import MessageBus
import ServiceLifecycle

/// The parts of a service's api or worker — bus, routes, outbox relay, consumer — wired the
/// one way both the running processes (``APIRuntime``, ``WorkerRuntime``, over AMQP) and the
/// flow tests (over ``InMemoryTransport``) use: the transport is the only thing that differs.
///
/// ```swift
/// let database = try ServiceAssembly<ReturnsService>.openDatabase(path: path)
/// let api = try ServiceAssembly<ReturnsService>.api(database: database, publisher: transport, logger: logger)
/// let worker = try await ServiceAssembly<ReturnsService>.worker(
///     database: database, publisher: transport, policy: RetryPolicy(failureEvent: ReturnsOperationFailed.self),
///     logger: logger) { bindings, policy in await transport.consumer(queue: "returns.events", bindings: bindings, policy: policy) }
/// ```
public struct ServiceAssembly<M: ServiceModule>: Sendable {
    public let module: M
    public let database: ServiceDatabase
    public let bus: MessageBus
    /// The api's routes (the module's and `GET /openapi.json`); empty for a worker.
    public let router: Router
    /// Publishes what the process's writes put in the outbox.
    public let relay: OutboxRelay
    /// The worker's consumer of its events; `nil` for an api.
    public let consumer: ConsumerService?


    /// A count that moves while the process works (relay batches, handled events).
    public var activity: @Sendable () -> Int {
        { [relay, consumer] in relay.batchCount + (consumer?.handledCount ?? 0) }
    }

    /// Opens (creating and migrating) the service's SQLite file.
    public static func openDatabase(path: String) throws -> ServiceDatabase {
        try ServiceDatabase(path: path, pageSize: M.databasePageSize, migrations: M.storeMigrations.sqlite)
    }

    /// Opens (creating and migrating) the service's store: its schema in PostgreSQL when
    /// `config` names one, else its SQLite file.
    public static func openDatabase(_ config: ServiceConfig, logger: Logger) throws -> ServiceDatabase {
        guard let postgres = config.postgres else { return try openDatabase(path: config.databasePath) }
        return try ServiceDatabase(postgres: postgres, schema: M.name, migrations: M.storeMigrations.postgres, logger: logger)
    }

    /// An api: the module's command handlers on the bus, its routes, the relay to `publisher`.
    public static func api(database: ServiceDatabase, publisher: any EventPublisher,
                           logger: Logger) throws -> ServiceAssembly {
        let module = M(database: database, logger: logger)
        var registry = HandlerRegistry()
        try module.registerCommandHandlers(&registry)
        let bus = MessageBus(appId: M.name, registry: registry, logger: logger)
        var router = Router(logger: logger)
        module.addRoutes(to: &router, bus: bus)
        OpenAPIRoute.add(to: &router, document: M.openAPIDocument)
        return ServiceAssembly(module: module, database: database, bus: bus, router: router,
                               relay: OutboxRelay(database: database, publisher: publisher, logger: logger),
                               consumer: nil)
    }

    /// A worker: the module's event handlers on the bus, a consumer of their routing keys made
    /// by `makeConsumer` (given the bindings and `policy`), the relay to `publisher`.
    public static func worker(database: ServiceDatabase, publisher: any EventPublisher, policy: RetryPolicy,
                              logger: Logger,
                              makeConsumer: ([String], RetryPolicy) async throws -> any EventConsumer) async throws -> ServiceAssembly {
        let module = M(database: database, logger: logger)
        var registry = HandlerRegistry()
        try module.registerEventHandlers(&registry)
        let bus = MessageBus(appId: M.name, registry: registry, logger: logger)
        let consumer = try await makeConsumer(bus.routingKeys, policy)
        let service = ConsumerService(consumer: consumer, bus: bus, policy: policy, database: database, logger: logger)
        return ServiceAssembly(module: module, database: database, bus: bus, router: Router(logger: logger),
                               relay: OutboxRelay(database: database, publisher: publisher, logger: logger),
                               consumer: service)
    }
}
