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
    /// The service's tables on each store engine (declared by its store: a module names no
    /// engine's types).
    static var storeMigrations: StoreMigrations { get }

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
    public static var storeMigrations: StoreMigrations { .none }
    public static var singleActiveConsumer: Bool { false }
}

/// A service's tables on each engine: SQLite migrations (idempotent: api and worker both run
/// them) and PostgreSQL ones, in order (each applied once per schema).
public struct StoreMigrations: Sendable {
    public let sqlite: @Sendable (inout DatabaseMigrator) -> Void
    public let postgres: [PostgresMigration]

    public init(sqlite: @escaping @Sendable (inout DatabaseMigrator) -> Void, postgres: [PostgresMigration]) {
        self.sqlite = sqlite
        self.postgres = postgres
    }

    /// No tables of the service's own (the outbox and the inbox are always there).
    public static let none = StoreMigrations(sqlite: { _ in }, postgres: [])
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
