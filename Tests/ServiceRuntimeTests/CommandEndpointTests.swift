import EventCatalog
import Foundation
import HTTPServer
import MessageBus
@testable import ServiceRuntime
import Testing

/// `POST` → command on the bus → 202, 503 or 500, through a real router and SQLite file.
@Suite("Command endpoint")
struct CommandEndpointTests {
    struct Stored: Command {}
    struct Unstorable: Command {}
    struct Undeclared: Command {}

    func router(_ database: ServiceDatabase) throws -> Router {
        var registry = HandlerRegistry()
        try registry.handle(Stored.self, raises: [WindowAdded.self]) { _, context in
            try await database.write(context) { _ in try context.raise(WindowAdded(window: 5)) }
        }
        try registry.handle(Unstorable.self, raises: [WindowAdded.self]) { _, context in
            try await database.writeSQLite(context) { db in try db.execute(sql: "INSERT INTO no_such_table VALUES (1)") }
        }
        try registry.handle(Undeclared.self) { _, context in
            try await database.write(context) { _ in try context.raise(WindowAdded(window: 5)) }
        }
        let bus = MessageBus(appId: "test", registry: registry)
        var router = Router()
        router.post("/stored") { request in try await CommandEndpoint.accept(Stored(), from: request, bus: bus) }
        router.post("/unstorable") { request in try await CommandEndpoint.accept(Unstorable(), from: request, bus: bus) }
        router.post("/undeclared") { request in try await CommandEndpoint.accept(Undeclared(), from: request, bus: bus) }
        return router
    }

    func post(_ router: Router, _ path: String) async throws -> (Int, [String: Any]) {
        let response = await router.respond(to: HTTPRequest(method: "POST", path: path,
                                                            headers: ["content-type": "application/json"],
                                                            body: Array("{}".utf8)))
        return (response.status, try JSONSerialization.jsonObject(with: Data(response.body)) as! [String: Any])
    }

    @Test("stored: 202 with the operation id; the store failing: 503; a handler's defect: 500, not 503")
    func statuses() async throws {
        let (database, dir) = try temporaryDatabase()
        defer { try? FileManager.default.removeItem(at: dir) }
        let router = try router(database)
        let (ok, body) = try await post(router, "/stored")
        #expect(ok == 202 && UUID(text: body["operation_id"] as? String ?? "") != nil)
        let (unstorable, failed) = try await post(router, "/unstorable")
        #expect(unstorable == 503 && (failed["error"] as? [String: Any])?["code"] as? String == "store_unavailable")
        let (undeclared, defect) = try await post(router, "/undeclared")
        #expect(undeclared == 500 && (defect["error"] as? [String: Any])?["code"] as? String == "internal_error")
        // Only the stored command's event is in the outbox.
        #expect(try await database.pool.read { db in try Outbox.depth(in: db) } == 1)
    }
}
