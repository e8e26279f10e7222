import Correlations
import EventCatalog
import Foundation
import HTTPServer
import Logging
import MessageBus
import Returns
import ServiceRuntime
import Testing

/// Both services' apis and workers on one in-memory broker, each with its own SQLite file.
final class Chain: Sendable {
    let directory: URL
    let transport: InMemoryTransport
    let returnsRouter: Router
    let correlationsRouter: Router
    let tasks: [Task<Void, any Error>]

    init() async throws {
        let logger = Logger(label: "test")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("chain-\(UUID().uuidString)")
        let transport = InMemoryTransport()
        var routers: [Router] = []
        var tasks: [Task<Void, any Error>] = []
        // The runtimes' own wiring (ServiceAssembly), with the in-memory transport for AMQP.
        func wire<M: ServiceModule>(_ type: M.Type) async throws {
            let database = try ServiceAssembly<M>.openDatabase(path: directory.appendingPathComponent("\(M.name).sqlite").path)
            let api = try ServiceAssembly<M>.api(database: database, publisher: transport, logger: logger)
            let worker = try await ServiceAssembly<M>.worker(
                database: database, publisher: transport, policy: RetryPolicy(failureEvent: M.operationFailedEvent),
                logger: logger
            ) { bindings, policy in await transport.consumer(queue: "\(M.name).events", bindings: bindings, policy: policy) }
            routers.append(api.router)
            for relay in [api.relay, worker.relay] { tasks.append(Task { try await relay.run() }) }
            tasks.append(Task { try await worker.consumer!.run() })
        }
        try await wire(ReturnsService.self)
        try await wire(CorrelationsService.self)
        self.directory = directory
        self.transport = transport
        returnsRouter = routers[0]
        correlationsRouter = routers[1]
        self.tasks = tasks
    }

    deinit {
        tasks.forEach { $0.cancel() }
        try? FileManager.default.removeItem(at: directory)
    }

    func post(_ router: Router, _ path: String, _ body: String) async -> HTTPResponse {
        await router.respond(to: HTTPRequest(method: "POST", path: path, headers: ["content-type": "application/json"],
                                             body: Array(body.utf8)))
    }

    func get(_ path: String, _ query: [String: String]) async throws -> (Int, [String: Any]) {
        let r = await correlationsRouter.respond(to: HTTPRequest(method: "GET", path: path, query: query))
        return (r.status, try JSONSerialization.jsonObject(with: Data(r.generated?.collect() ?? r.body)) as! [String: Any])
    }

    /// The `correlations_updated` events caused by operation `op`.
    func updates(for op: String) async throws -> [CorrelationsUpdated] {
        try await transport.published.filter { $0.routingKey == CorrelationsUpdated.routingKey && $0.correlationId == op }
            .map { try $0.decode(CorrelationsUpdated.self) }
    }

    func waitFor(_ what: String, _ condition: () async throws -> Bool) async throws {
        let deadline = Date().addingTimeInterval(15)
        while try await !condition() {
            guard Date() < deadline else { throw ChainTimeout(what: what) }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}

struct ChainTimeout: Error { let what: String }

/// Closes of a few symbols on the same dates, some correlated.
func closes(_ symbol: Int, _ n: Int) -> [Double] {
    var p = 100.0 + Double(symbol)
    return (0..<n).map { i in
        p *= 1 + 0.01 * sin(Double(i) * 0.7) + 0.004 * cos(Double(i * (symbol + 2)))
        return (p * 10_000).rounded() / 10_000
    }
}

func dates(_ n: Int) -> [String] {
    (0..<n).map { CalendarDate(daysSinceEpoch: 19_700 + $0).description }
}

@Suite("Returns → correlations through the bus and SQLite")
struct ChainFlowTests {
    @Test("prices of several symbols end in a correlation matrix equal to a direct computation")
    func chain() async throws {
        let chain = try await Chain()
        let n = 30, days = dates(30)
        var ops: [String] = []
        for s in 0..<3 {
            let items = zip(days, closes(s, n)).map { "{\"date\":\"\($0)\",\"close\":\($1)}" }.joined(separator: ",")
            let r = await chain.post(chain.returnsRouter, "/prices", "{\"symbol\":\"S\(s)\",\"prices\":[\(items)]}")
            #expect(r.status == 202)
            let op = (try JSONSerialization.jsonObject(with: Data(r.body)) as! [String: String])["operation_id"]!
            ops.append(op)
            // One symbol at a time: the workers handle events concurrently, so S2's update sees
            // S0 and S1 only once theirs are in.
            try await chain.waitFor("update of \(op)") { try await !chain.updates(for: op).isEmpty }
        }
        let last = try await chain.updates(for: ops[2])[0]
        #expect(last.symbols == ["S2"])
        #expect(last.windows == [20, 60, 252])
        #expect(last.pairs == 6)
        #expect(last.asOf?.description == days.last)

        let (status, body) = try await chain.get("/correlations", ["symbols": "S0,S1,S2", "window": "20"])
        #expect(status == 200)
        let matrix = body["matrix"] as! [[Any]]
        let returns = (0..<3).map { s in
            let c = closes(s, n)
            return (1..<n).map { c[$0] / c[$0 - 1] - 1 }
        }
        for i in 0..<3 {
            for j in 0..<3 {
                let expected = i == j ? 1.0 : CorrelationMath.pearson(Array(returns[i].suffix(20)), Array(returns[j].suffix(20)))!
                #expect(abs((matrix[i][j] as! Double) - expected) < 1e-12, "\(i),\(j)")
            }
        }
        #expect(body["as_of"] as? String == days.last)
        // 60 and 252 need more returns than 29: null everywhere, the diagonal too.
        let (_, wide) = try await chain.get("/correlations", ["symbols": "S0,S1", "window": "60"])
        #expect((wide["matrix"] as! [[Any]]).flatMap { $0 }.allSatisfy { $0 is NSNull })
        let (_, pair) = try await chain.get("/correlations/S1/S0", ["window": "20"])
        #expect(pair["observations"] as? Int == 20)
        #expect(abs((pair["value"] as! Double) - (matrix[1][0] as! Double)) < 1e-15)

        // The same prices again: no return changes, and the write still resolves.
        let items = zip(days, closes(0, n)).map { "{\"date\":\"\($0)\",\"close\":\($1)}" }.joined(separator: ",")
        let again = await chain.post(chain.returnsRouter, "/prices", "{\"symbol\":\"S0\",\"prices\":[\(items)]}")
        let op = (try JSONSerialization.jsonObject(with: Data(again.body)) as! [String: String])["operation_id"]!
        try await chain.waitFor("no-change update") { try await !chain.updates(for: op).isEmpty }
        let none = try await chain.updates(for: op)[0]
        #expect(none.windows.isEmpty && none.pairs == 0 && none.symbols == ["S0"])
        #expect(none.asOf?.description == days.last)
    }

    @Test("POST /windows tracks a new window and backfills every pair; unknowns are 404")
    func windows() async throws {
        let chain = try await Chain()
        let days = dates(12)
        for s in 0..<3 {
            let items = zip(days, closes(s, 12)).map { "{\"date\":\"\($0)\",\"close\":\($1)}" }.joined(separator: ",")
            _ = await chain.post(chain.returnsRouter, "/prices", "{\"symbol\":\"S\(s)\",\"prices\":[\(items)]}")
        }
        try await chain.waitFor("3 symbols projected") {
            try await chain.get("/correlations", ["symbols": "S0,S1,S2", "window": "20"]).0 == 200
        }
        #expect(try await chain.get("/correlations", ["symbols": "S0,S1", "window": "10"]).1["error"] != nil)
        let r = await chain.post(chain.correlationsRouter, "/windows", "{\"window\": 10}")
        #expect(r.status == 202)
        let op = (try JSONSerialization.jsonObject(with: Data(r.body)) as! [String: String])["operation_id"]!
        try await chain.waitFor("backfill") { try await !chain.updates(for: op).isEmpty }
        let update = try await chain.updates(for: op)[0]
        #expect(update.windows == [10])
        #expect(update.pairs == 3)
        #expect(update.symbols == ["S0", "S1", "S2"])
        let (status, body) = try await chain.get("/correlations", ["symbols": "S2,S0", "window": "10"])
        #expect(status == 200)
        #expect((body["matrix"] as! [[Any]])[0][1] is Double)

        #expect(try await chain.get("/correlations", ["symbols": "S0,NOPE", "window": "10"]).1["error"].map {
            ($0 as! [String: Any])["code"] as? String } == "unknown_symbol")
        #expect(try await chain.get("/correlations", ["symbols": "S0", "window": "11"]).0 == 404)
        #expect(try await chain.get("/correlations", ["symbols": "S0", "window": "abc"]).0 == 400)
        #expect(try await chain.get("/correlations", ["window": "10"]).0 == 400)
        #expect(try await chain.get("/correlations", ["symbols": "S0", "window": "1"]).0 == 422)
        #expect(try await chain.get("/correlations", ["symbols": "bad", "window": "10"]).0 == 422)
    }
}
