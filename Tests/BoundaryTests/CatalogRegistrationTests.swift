import Correlations
import EventCatalog
import Foundation
import Logging
import MessageBus
import Returns
import ServiceRuntime
import Testing

/// The catalog's publisher and consumer lists are what the services' handlers really do: an
/// api publishes what its command handlers declare they raise, a worker what its event
/// handlers raise plus its `operation_failed`, and consumes the routing keys it binds.
@Suite("Catalog against the handler registrations")
struct CatalogRegistrationTests {
    func registrations<M: ServiceModule>(_ type: M.Type) throws -> (api: MessageBus, worker: MessageBus) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("catalog-\(UUID().uuidString).sqlite").path
        let database = try ServiceAssembly<M>.openDatabase(path: path)
        let module = M(database: database, logger: Logger(label: "test"))
        var api = HandlerRegistry(), worker = HandlerRegistry()
        try module.registerCommandHandlers(&api)
        try module.registerEventHandlers(&worker)
        return (MessageBus(appId: M.name, registry: api), MessageBus(appId: M.name, registry: worker))
    }

    func declaration(_ name: String) throws -> ServiceDeclaration {
        try #require(Catalog.services.first { $0.name == name })
    }

    func check<M: ServiceModule>(_ type: M.Type) throws {
        let (api, worker) = try registrations(M.self)
        let apiDeclared = try declaration("\(M.name)-api")
        #expect(apiDeclared.publishes.sorted() == api.raisedRoutingKeys)
        #expect(apiDeclared.consumes.isEmpty && api.routingKeys.isEmpty)
        let workerDeclared = try declaration("\(M.name)-worker")
        let failure = try #require(M.operationFailedEvent).routingKey
        #expect(workerDeclared.publishes.sorted() == (worker.raisedRoutingKeys + [failure]).sorted())
        #expect(workerDeclared.consumes.sorted() == worker.routingKeys)
    }

    @Test("returns-api and returns-worker")
    func returns() throws { try check(ReturnsService.self) }

    @Test("correlations-api and correlations-worker")
    func correlations() throws { try check(CorrelationsService.self) }

    @Test("every process of the catalog is checked here or is the boundary (which consumes every key and publishes none)")
    func everyProcess() throws {
        let checked = ["returns-api", "returns-worker", "correlations-api", "correlations-worker"]
        #expect(Catalog.services.map(\.name).sorted() == (checked + ["boundary"]).sorted())
        let boundary = try declaration("boundary")
        #expect(boundary.publishes.isEmpty && boundary.consumes == Catalog.eventTypes.map { $0.routingKey })
    }
}
