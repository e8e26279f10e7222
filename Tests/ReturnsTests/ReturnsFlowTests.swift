import EventCatalog
import Foundation
import HTTPServer
import Logging
import MessageBus
import Returns
import ServiceRuntime
import Testing

/// The returns service's api and worker wired to one in-memory broker and a real SQLite
/// file: command → outbox → relay → queue → worker bus → store → outbox → relay.
final class ReturnsHarness: Sendable {
    let directory: URL
    let database: ServiceDatabase
    let transport = InMemoryTransport()
    let apiBus: MessageBus
    let workerBus: MessageBus
    let router: Router
    let store: ReturnsStore
    let tasks: [Task<Void, any Error>]

    init() async throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("returns-\(UUID().uuidString)")
        database = try ServiceAssembly<ReturnsService>.openDatabase(path: directory.appendingPathComponent("returns.sqlite").path)
        let logger = Logger(label: "test")
        store = ReturnsStore(database: database)
        // The runtimes' own wiring (ServiceAssembly), with the in-memory transport for AMQP.
        let api = try ServiceAssembly<ReturnsService>.api(database: database, publisher: transport, logger: logger)
        let worker = try await ServiceAssembly<ReturnsService>.worker(
            database: database, publisher: transport, policy: RetryPolicy(failureEvent: ReturnsOperationFailed.self),
            logger: logger
        ) { [transport] bindings, policy in await transport.consumer(queue: "returns.events", bindings: bindings, policy: policy) }
        apiBus = api.bus
        workerBus = worker.bus
        router = api.router
        tasks = [
            Task { try await api.relay.run() },
            Task { try await worker.relay.run() },
            Task { try await worker.consumer!.run() },
        ]
    }

    deinit {
        tasks.forEach { $0.cancel() }
        try? FileManager.default.removeItem(at: directory)
    }

    func post(_ body: String) async -> HTTPResponse {
        await router.respond(to: HTTPRequest(method: "POST", path: "/prices",
                                             headers: ["content-type": "application/json"], body: Array(body.utf8)))
    }

    func get(_ path: String, query: [String: String] = [:]) async -> HTTPResponse {
        await router.respond(to: HTTPRequest(method: "GET", path: path, query: query))
    }

    /// The `ReturnsCalculated` events published so far.
    func calculated() async throws -> [EventEnvelope] {
        await transport.published.filter { $0.routingKey == ReturnsCalculated.routingKey }
    }

    func waitForCalculated(_ count: Int) async throws {
        try await waitUntil { try await calculated().count >= count }
    }

    /// Polls `condition` every 10 ms; throws after 10 s.
    func waitUntil(_ condition: () async throws -> Bool) async throws {
        let deadline = Date().addingTimeInterval(10)
        while try await !condition() {
            guard Date() < deadline else { throw ConformanceTimeout() }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}

struct ConformanceTimeout: Error {}


func json(_ response: HTTPResponse) throws -> [String: Any] {
    try JSONSerialization.jsonObject(with: Data(response.body)) as! [String: Any]
}

func prices(_ symbol: String, _ points: [(String, Double)]) -> String {
    let items = points.map { "{\"date\":\"\($0.0)\",\"close\":\($0.1)}" }.joined(separator: ",")
    return "{\"symbol\":\"\(symbol)\",\"prices\":[\(items)]}"
}

@Suite("Returns service through the bus, in-memory transport and SQLite")
struct ReturnsFlowTests {
    @Test("POST /prices answers 202 with an operation id; the worker computes returns under that id")
    func endToEnd() async throws {
        let h = try await ReturnsHarness()
        let response = await h.post(prices("AAPL", [("2024-01-02", 100), ("2024-01-03", 110), ("2024-01-04", 99)]))
        #expect(response.status == 202)
        let operation = try json(response)["operation_id"] as! String
        #expect(UUID(uuidString: operation) != nil)
        #expect(response.headers["Location"] == "/operations/\(operation)")

        try await h.waitForCalculated(1)
        let published = await h.transport.published
        let recorded = try #require(published.first { $0.routingKey == PricesRecorded.routingKey })
        #expect(recorded.correlationId == operation)
        #expect(try recorded.decode(PricesRecorded.self).count == 3)
        let calculated = try #require(try await h.calculated().first)
        #expect(calculated.correlationId == operation)
        #expect(calculated.causationId == recorded.eventId.uuidString.lowercased())
        let event = try calculated.decode(ReturnsCalculated.self)
        #expect(event.returns.map(\.date.description) == ["2024-01-03", "2024-01-04"])
        #expect(abs(event.returns[0].value - 0.1) < 1e-15)

        let view = try json(await h.get("/returns/AAPL"))
        #expect(view["kind"] as? String == "simple")
        #expect((view["returns"] as! [[String: Any]]).count == 2)
        let logView = try json(await h.get("/returns/AAPL", query: ["kind": "log"]))
        let first = (logView["returns"] as! [[String: Any]])[0]["value"] as! Double
        #expect(abs(first - log(1.1)) < 1e-15)
        let symbols = try json(await h.get("/symbols"))
        #expect(symbols["symbols"] as? [String] == ["AAPL"])
    }

    @Test("a first price raises ReturnsCalculated with no returns")
    func firstPrice() async throws {
        let h = try await ReturnsHarness()
        #expect(await h.post(prices("MSFT", [("2024-01-02", 370)])).status == 202)
        try await h.waitForCalculated(1)
        #expect(try await h.calculated()[0].decode(ReturnsCalculated.self).returns.isEmpty)
    }

    @Test("out-of-order inserts and updates recompute exactly the affected returns")
    func outOfOrderAndUpdates() async throws {
        let h = try await ReturnsHarness()
        _ = await h.post(prices("X", [("2024-01-02", 100), ("2024-01-05", 120)]))
        try await h.waitForCalculated(1)
        // Insert a date in the middle: the returns of 01-04 (new) and 01-05 (new base) change.
        _ = await h.post(prices("X", [("2024-01-04", 110)]))
        try await h.waitForCalculated(2)
        let second = try await h.calculated()[1].decode(ReturnsCalculated.self)
        #expect(second.returns.map(\.date.description) == ["2024-01-04", "2024-01-05"])
        #expect(abs(second.returns[0].value - 0.1) < 1e-15)
        #expect(abs(second.returns[1].value - (120.0 / 110.0 - 1)) < 1e-15)
        // Update an existing date with another close: the same two returns change again.
        _ = await h.post(prices("X", [("2024-01-04", 105)]))
        try await h.waitForCalculated(3)
        let third = try await h.calculated()[2].decode(ReturnsCalculated.self)
        #expect(third.returns.map(\.date.description) == ["2024-01-04", "2024-01-05"])
        let stored = try #require(try await h.store.returns(of: "X", from: nil, to: nil, log: false))
        #expect(stored.map(\.value) == [105.0 / 100.0 - 1, 120.0 / 105.0 - 1])
        // Recording the same close again changes nothing, and says so with an empty list.
        _ = await h.post(prices("X", [("2024-01-04", 105)]))
        try await h.waitForCalculated(4)
        #expect(try await h.calculated()[3].decode(ReturnsCalculated.self).returns.isEmpty)
    }

    @Test("a redelivered event changes nothing and raises nothing (inbox)")
    func idempotent() async throws {
        let h = try await ReturnsHarness()
        _ = await h.post(prices("Y", [("2024-01-02", 10), ("2024-01-03", 11)]))
        try await h.waitForCalculated(1)
        let recorded = try #require(await h.transport.published.first { $0.routingKey == PricesRecorded.routingKey })
        try await h.workerBus.dispatch(recorded)
        // What the redelivery raised, if anything, was stored with its transaction, before
        // `dispatch` returned: once the outbox is empty, it has been published.
        try await h.waitUntil { try await h.database.pool.read { db in try Outbox.depth(in: db) } == 0 }
        #expect(try await h.calculated().count == 1)
    }

    @Test("reads: unknown symbol 404, bad symbol 422, bad dates 400, ranges inclusive")
    func reads() async throws {
        let h = try await ReturnsHarness()
        #expect(await h.get("/returns/NOPE").status == 404)
        #expect(try json(await h.get("/prices/NOPE"))["error"] != nil)
        #expect(await h.get("/returns/bad").status == 422)
        _ = await h.post(prices("Z", [("2024-01-02", 10), ("2024-01-03", 11), ("2024-01-04", 12)]))
        try await h.waitForCalculated(1)
        #expect(await h.get("/returns/Z", query: ["from": "2024-13-01"]).status == 400)
        #expect(await h.get("/returns/Z", query: ["kind": "weird"]).status == 400)
        let ranged = try json(await h.get("/prices/Z", query: ["from": "2024-01-03", "to": "2024-01-04"]))
        #expect((ranged["prices"] as! [[String: Any]]).map { $0["date"] as! String } == ["2024-01-03", "2024-01-04"])
    }
}
