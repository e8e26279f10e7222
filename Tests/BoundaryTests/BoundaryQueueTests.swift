import AMQPTransport
@testable import Boundary
import ServiceRuntime
import Testing

@Suite("The boundary's queue")
struct BoundaryQueueTests {
    private func spec(_ values: [String: String]) throws -> AMQPConsumer.QueueSpec {
        let environment = Environment(values)
        let config = try ServiceConfig(service: "boundary", process: "boundary", environment: environment)
        return try BoundaryRuntime.Settings(environment).queue(config)
    }

    @Test("durable mode: boundary.<hostname>-<port>.events, or boundary.<STEGA_BOUNDARY_ID>.events; expiry and bound")
    func named() throws {
        let host = BoundaryRuntime.Settings.hostname()
        #expect(!host.isEmpty && host.allSatisfy(BoundaryRuntime.Settings.fitsQueueName))
        #expect(try spec(["STEGA_HTTP_PORT": "8123"]).declaredName == "boundary.\(host)-8123.events")
        let chosen = try spec(["STEGA_BOUNDARY_ID": "edge-1.eu_west", "STEGA_BOUNDARY_QUEUE_EXPIRES_S": "60",
                               "STEGA_QUEUE_TYPE": "quorum"])
        #expect(chosen.declaredName == "boundary.edge-1.eu_west.events")
        #expect(chosen.instance?.expiresMs == 60_000)
        #expect(chosen.instance?.maxLength == 100_000)
        #expect(chosen.queueType == .quorum)
    }

    @Test("transient mode: the seed's server-named queue")
    func transient() throws {
        let seed = try spec(["STEGA_QUEUE_MODE": "transient", "STEGA_BOUNDARY_ID": "ignored"])
        #expect(seed.declaredName == "")
        #expect(seed.instance == nil)
    }

    @Test("an id with other characters, or too long, or an expiry out of range is a configuration error",
          arguments: [["STEGA_BOUNDARY_ID": "a b"], ["STEGA_BOUNDARY_ID": "é"], ["STEGA_BOUNDARY_ID": "x/y"],
                      ["STEGA_BOUNDARY_ID": String(repeating: "a", count: 201)],
                      ["STEGA_BOUNDARY_QUEUE_EXPIRES_S": "5"], ["STEGA_BOUNDARY_QUEUE_EXPIRES_S": "never"]])
    func refused(values: [String: String]) throws {
        #expect(throws: ConfigError.self) { try BoundaryRuntime.Settings(Environment(values)) }
    }
}
