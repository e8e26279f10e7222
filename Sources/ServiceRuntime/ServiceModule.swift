import EventCatalog
import Foundation
import GRDB
import HTTPServer
import Logging
import MessageBus

/// What a service (returns, correlations, …) gives the runtimes: its tables, its command
/// handlers and routes for the api, and its event handlers for the worker.
public protocol ServiceModule: Sendable {
    /// `returns`: the `app_id` of its events, the prefix of its routing keys and queue.
    static var name: String { get }
    /// Registers the service's SQLite migrations (idempotent: api and worker both run them).
    static func migrate(_ migrator: inout DatabaseMigrator)
    /// The service's PostgreSQL migrations, in order (each applied once per schema).
    static var postgresMigrations: [PostgresMigration] { get }

    init(database: ServiceDatabase, logger: Logger)
    /// The api's command handlers.
    func registerCommandHandlers(_ registry: inout HandlerRegistry) throws
    /// The api's routes; writes go through `bus`.
    func addRoutes(to router: inout Router, bus: MessageBus)
    /// The worker's event handlers; their routing keys are what the worker binds.
    func registerEventHandlers(_ registry: inout HandlerRegistry) throws
    /// The api's OpenAPI 3.1 document (served at `GET /openapi.json`).
    static var openAPIDocument: [UInt8] { get }
    /// The `<service>.events.operation_failed` its worker raises when an event of an
    /// operation is dead-lettered; `nil`: none.
    static var operationFailedEvent: (any OperationFailedEvent.Type)? { get }
    /// The page size of the service's SQLite file when it is created; `nil`: SQLite's 4,096.
    static var databasePageSize: Int? { get }
    /// Whether the worker's events must be handled in the order they were published: its
    /// queue then has a single active consumer (replicas stand by). `false` for handlers
    /// that recompute from the store's state, whatever the order.
    static var singleActiveConsumer: Bool { get }
}

extension ServiceModule {
    public static var operationFailedEvent: (any OperationFailedEvent.Type)? { nil }
    public static var databasePageSize: Int? { nil }
    public static var postgresMigrations: [PostgresMigration] { [] }
    public static var singleActiveConsumer: Bool { false }
}

/// `GET /openapi.json`.
public enum OpenAPIRoute {
    public static func add(to router: inout Router, document: [UInt8]) {
        router.get("/openapi.json") { _ in .json(bytes: document) }
    }

    /// The bytes of a module's bundled `openapi.json`.
    public static func load(_ url: URL?) -> [UInt8] {
        url.flatMap { try? Data(contentsOf: $0) }.map(Array.init) ?? Array("{}".utf8)
    }
}
