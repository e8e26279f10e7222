import Correlations
import EventCatalog
import Foundation
import HTTPServer
import Logging
import MessageBus
import Returns
@testable import ServiceRuntime
import Synchronization
import Testing

/// Both services' apis and workers on one in-memory broker, with their stores on `engine`.
final class Chain: Sendable {
    let place: Place
    let transport = InMemoryTransport()
    let returnsRouter: Router
    let correlationsRouter: Router
    let databases: [ServiceDatabase]
    let tasks: [Task<Void, any Error>]

    init(engine: Engine) async throws {
        let logger = Logger(label: "test")
        let place = engine.place()
        var routers: [Router] = []
        var databases: [ServiceDatabase] = []
        var tasks: [Task<Void, any Error>] = []
        let transport = transport
        func wire<M: ServiceModule>(_ type: M.Type) async throws {
            let database = try place.open(M.name, pageSize: M.databasePageSize, migrations: M.storeMigrations)
            let api = try ServiceAssembly<M>.api(database: database, publisher: transport, logger: logger)
            let worker = try await ServiceAssembly<M>.worker(
                database: database, publisher: transport, policy: RetryPolicy(failureEvent: M.operationFailedEvent),
                logger: logger
            ) { bindings, policy in await transport.consumer(queue: "\(M.name).events", bindings: bindings, policy: policy) }
            routers.append(api.router)
            databases.append(database)
            for relay in [api.relay, worker.relay] { tasks.append(Task { try await relay.run() }) }
            tasks.append(Task { try await worker.consumer!.run() })
        }
        try await wire(ReturnsService.self)
        try await wire(CorrelationsService.self)
        self.place = place
        returnsRouter = routers[0]
        correlationsRouter = routers[1]
        self.databases = databases
        self.tasks = tasks
    }

    func stop() async {
        tasks.forEach { $0.cancel() }
        databases.forEach { $0.close() }
        await place.remove()
    }

    func post(_ router: Router, _ path: String, _ body: String) async -> HTTPResponse {
        await router.respond(to: HTTPRequest(method: "POST", path: path, headers: ["content-type": "application/json"],
                                             body: Array(body.utf8)))
    }

    /// The body of a GET, as the client receives it.
    func get(_ router: Router, _ path: String, _ query: [String: String] = [:]) async -> (Int, String) {
        let r = await router.respond(to: HTTPRequest(method: "GET", path: path, query: query))
        return (r.status, String(decoding: r.generated?.collect() ?? r.body, as: UTF8.self))
    }

    /// Waits until operation `response` has ended: `updates` `correlations_updated` raised
    /// for it (the end of each of its events' chain), and every outbox empty. A correlation
    /// is computed a little differently when a symbol moves in a batch of its own than in a
    /// window's backfill (last bits), so each step waits for the one before.
    func settle(_ response: HTTPResponse, updates: Int) async throws {
        let op = (try JSONSerialization.jsonObject(with: Data(response.body)) as! [String: String])["operation_id"]!
        // What was still missing at the last look, for the message of a timeout.
        let missing = Mutex("")
        do {
            try await waitUntil("operation \(op) to end", seconds: 60) {
                let done = await transport.published.filter { $0.routingKey == CorrelationsUpdated.routingKey && $0.correlationId == op }
                guard done.count >= updates else {
                    missing.withLock { $0 = "\(done.count) of \(updates) correlations_updated" }
                    return false
                }
                let depths = try await databases.asyncMap { try await $0.outboxDepth() }
                missing.withLock { $0 = "outbox rows \(depths) (returns, correlations)" }
                return depths.allSatisfy { $0 == 0 }
            }
        } catch {
            Issue.record("on \(place.engine): \(missing.withLock { $0 })")
            throw error
        }
    }
}

extension Array {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for element in self { out.append(try await transform(element)) }
        return out
    }
}

/// Deterministic closes: a random walk from a fixed seed (the same on every engine and run).
struct Walk {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    /// The next value in [0, 1).
    mutating func next() -> Double {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Double(state >> 11) / Double(1 << 53)
    }
}

@Suite("Read views: identical data gives identical JSON on every engine")
struct ViewsConformanceTests {
    static let symbols = (0..<12).map { String(format: "S%02d", $0) }

    /// The same writes on each engine: 12 symbols × 300 days in two overlapping posts (the
    /// overlap changes 50 closes of each), a corrected old close, and a window added.
    static func load(_ chain: Chain) async throws {
        var walk = Walk(seed: 42)
        let days = (0..<300).map { CalendarDate(daysSinceEpoch: 19_000 + $0 + ($0 / 5) * 2).description }
        var closes: [[Double]] = symbols.map { _ in
            var p = 100.0
            return days.map { _ in
                p *= 1 + (walk.next() - 0.5) * 0.04
                return (p * 10_000).rounded() / 10_000
            }
        }
        func post(_ range: Range<Int>) async throws {
            let body = symbols.indices.map { s in
                "\"\(symbols[s])\":[" + range.map { "{\"date\":\"\(days[$0])\",\"close\":\(closes[s][$0])}" }.joined(separator: ",") + "]"
            }.joined(separator: ",")
            let r = await chain.post(chain.returnsRouter, "/prices", "{\"prices\":{\(body)}}")
            #expect(r.status == 202)
            try await chain.settle(r, updates: symbols.count)
        }
        try await post(0..<200)
        for s in symbols.indices { for d in 150..<200 { closes[s][d] *= 1.001 } }
        try await post(150..<300)
        closes[3][0] = 99.5
        try await post(0..<1)
        let window = await chain.post(chain.correlationsRouter, "/windows", "{\"window\":5}")
        #expect(window.status == 202)
        try await chain.settle(window, updates: 1)
    }

    /// Every read view of both services, by name.
    static func views(_ chain: Chain) async -> [(String, Int, String)] {
        var out: [(String, Int, String)] = []
        func add(_ router: Router, _ path: String, _ query: [String: String] = [:]) async {
            let (status, body) = await chain.get(router, path, query)
            out.append(("\(path)?\(query.sorted { $0.key < $1.key })", status, body))
        }
        await add(chain.returnsRouter, "/symbols")
        for symbol in symbols + ["NOPE"] {
            await add(chain.returnsRouter, "/prices/\(symbol)")
            await add(chain.returnsRouter, "/prices/\(symbol)", ["from": "2022-01-10", "to": "2022-03-01"])
            await add(chain.returnsRouter, "/returns/\(symbol)")
            await add(chain.returnsRouter, "/returns/\(symbol)", ["kind": "log"])
            await add(chain.returnsRouter, "/returns/\(symbol)/summary")
        }
        for window in [5, 20, 60, 252] {
            await add(chain.correlationsRouter, "/correlations", ["symbols": symbols.reversed().joined(separator: ","), "window": "\(window)"])
            await add(chain.correlationsRouter, "/correlations", ["symbols": "S01,NOPE", "window": "\(window)"])
            await add(chain.correlationsRouter, "/correlations/S07/S02", ["window": "\(window)"])
        }
        await add(chain.correlationsRouter, "/correlations", ["symbols": "S01,S00", "window": "7"])
        return out
    }

    @Test("returns and correlations views on SQLite and on PostgreSQL are byte for byte the same",
          .enabled(if: Engine.databaseURL != nil, Engine.skipReason))
    func identical() async throws {
        var results: [[(String, Int, String)]] = []
        for engine in Engine.allCases {
            let chain = try await Chain(engine: engine)
            try await Self.load(chain)
            results.append(await Self.views(chain))
            await chain.stop()
        }
        let (sqlite, postgres) = (results[0], results[1])
        #expect(sqlite.count == postgres.count)
        for (a, b) in zip(sqlite, postgres) {
            #expect(a.1 == b.1, "status of \(a.0)")
            #expect(a.2 == b.2, "body of \(a.0)")
        }
        // The views hold what was written (a comparison of two empty stores would pass too).
        let symbolsBody = sqlite.first { $0.0.hasPrefix("/symbols") }!
        #expect(symbolsBody.2 == "{\"symbols\":[\(Self.symbols.map { "\"\($0)\"" }.joined(separator: ","))]}")
        let matrix = sqlite.first { $0.0.hasPrefix("/correlations?") && $0.0.contains("\"20\"") }!
        #expect(matrix.1 == 200)
        #expect(!matrix.2.contains("[null,null"), "a 20-day window over 300 days has values")
        #expect(sqlite.filter { $0.1 == 200 }.count > 60)
    }
}
