import Boundary
import Correlations
import Foundation
import HTTPServer
import Logging
import MessageBus
import Returns
import ServiceRuntime
import Testing

/// The routes each api serves, built the way its runtime builds them.
func apiRouter<M: ServiceModule>(_ type: M.Type) throws -> Router {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("oas-\(UUID().uuidString)")
    let database = try ServiceDatabase(path: dir.appendingPathComponent("x.sqlite").path, migrations: M.storeMigrations.sqlite)
    let module = M(database: database, logger: Logger(label: "t"))
    var registry = HandlerRegistry()
    try module.registerCommandHandlers(&registry)
    let bus = MessageBus(appId: M.name, registry: registry)
    var router = Router()
    module.addRoutes(to: &router, bus: bus)
    OpenAPIRoute.add(to: &router, document: M.openAPIDocument)
    HealthRoutes.add(to: &router, process: M.name, checks: [])
    MetricsSetup.addRoute(to: &router)
    return router
}

func documentRoutes(_ bytes: [UInt8]) throws -> Set<String> {
    let doc = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
    #expect(doc["openapi"] as? String == "3.1.0")
    let paths = try #require(doc["paths"] as? [String: [String: Any]])
    return Set(paths.flatMap { path, methods in methods.keys.map { "\($0.uppercased()) \(path)" } })
}

@Suite("OpenAPI documents and routers")
struct OpenAPITests {
    @Test("returns-api: the document's paths are exactly the router's routes, and it is served")
    func returns() async throws {
        let router = try apiRouter(ReturnsService.self)
        #expect(Set(router.routeList) == (try documentRoutes(ReturnsService.openAPIDocument)))
        let served = await router.respond(to: HTTPRequest(method: "GET", path: "/openapi.json"))
        #expect(served.status == 200 && served.body == ReturnsService.openAPIDocument)
    }

    @Test("correlations-api: the same")
    func correlations() throws {
        #expect(Set(try apiRouter(CorrelationsService.self).routeList)
                == (try documentRoutes(CorrelationsService.openAPIDocument)))
    }

    @Test("boundary: the same")
    func boundary() throws {
        let tracker = OperationTracker()
        var router = Router()
        BoundaryRoutes(tracker: tracker).add(to: &router)
        ConsoleRoutes(returns: URL(string: "http://127.0.0.1:1")!, correlations: URL(string: "http://127.0.0.1:2")!).add(to: &router)
        router.webSocket("/ws") { _ in WebSocketHub(tracker: tracker) }
        OpenAPIRoute.add(to: &router, document: BoundaryRoutes.openAPIDocument)
        HealthRoutes.add(to: &router, process: "boundary", checks: [])
        MetricsSetup.addRoute(to: &router)
        #expect(Set(router.routeList) == (try documentRoutes(BoundaryRoutes.openAPIDocument)))
    }
}

@Suite("The console's files")
struct ConsoleFilesTests {
    @Test("GET / is the page with its policy; its script and styles are served; nothing else is")
    func files() async throws {
        var router = Router()
        ConsoleRoutes(returns: URL(string: "http://127.0.0.1:1")!, correlations: URL(string: "http://127.0.0.1:2")!).add(to: &router)
        let page = await router.respond(to: HTTPRequest(method: "GET", path: "/"))
        #expect(page.status == 200 && page.headers["Content-Type"] == "text/html; charset=utf-8")
        #expect(page.headers["Content-Security-Policy"]?.contains("script-src 'self'") == true)
        let html = String(decoding: page.body, as: UTF8.self)
        // Every file the page names is served, and the page has the views DESIGN.md lists.
        for file in ["console.js", "console.css"] {
            #expect(html.contains("/console/\(file)"))
            let served = await router.respond(to: HTTPRequest(method: "GET", path: "/console/\(file)"))
            #expect(served.status == 200 && !served.body.isEmpty)
        }
        for view in ["events", "op", "correlations", "symbol"] { #expect(html.contains(#"data-view="\#(view)""#)) }
        #expect(html.contains("data-operation-status"))
        for path in ["/console/index.html", "/console/missing.js", "/console/../openapi.json"] {
            #expect(await router.respond(to: HTTPRequest(method: "GET", path: path)).status == 404, "\(path)")
        }
        // An api that cannot be reached: a JSON 502, not a hang or a crash.
        let down = await router.respond(to: HTTPRequest(method: "GET", path: "/api/returns/symbols"))
        #expect(down.status == 502 && String(decoding: down.body, as: UTF8.self).contains("upstream_unreachable"))
    }
}
