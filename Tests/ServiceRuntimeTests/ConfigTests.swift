import AMQPTransport
import Foundation
import Logging
import ServiceRuntime
import Testing

@Suite("Configuration")
struct ConfigTests {
    @Test("defaults follow DESIGN.md")
    func defaults() throws {
        let api = try ServiceConfig(service: "returns", process: "returns-api", environment: Environment([:]))
        #expect(api.amqp.url == AMQPURL(user: "guest", password: "guest", host: "127.0.0.1", port: 5672, vhost: "/"))
        #expect(api.amqp.exchange == "events")
        #expect(api.amqp.exchangeType == "direct")
        #expect(api.queueMode == .durable)
        #expect(api.httpHost == "127.0.0.1")
        #expect(api.httpPort == 8081)
        #expect(api.dataDirectory == "./data")
        #expect(api.logLevel == .info)
        #expect(api.logFormat == .text)
        #expect(api.retryAttempts == 5)
        #expect(api.databasePath.hasSuffix("data/returns.sqlite"))
        let worker = try ServiceConfig(service: "returns", process: "returns-worker", environment: Environment([:]))
        #expect(worker.httpPort == 9081)
    }

    @Test("X_FILE is read when X is not set, and X wins when both are")
    func fileVariables() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let secret = dir.appendingPathComponent("amqp_url")
        try "amqp://svc:s3cret@broker:5673/prod\n".write(to: secret, atomically: true, encoding: .utf8)
        let fromFile = try ServiceConfig(service: "returns", process: "returns-api",
                                         environment: Environment(["STEGA_AMQP_URL_FILE": secret.path]))
        #expect(fromFile.amqp.url == AMQPURL(user: "svc", password: "s3cret", host: "broker", port: 5673, vhost: "prod"))
        let both = try ServiceConfig(service: "returns", process: "returns-api", environment: Environment([
            "STEGA_AMQP_URL_FILE": secret.path, "STEGA_AMQP_URL": "amqp://a:b@c:1/",
        ]))
        #expect(both.amqp.url.host == "c")
        #expect(throws: ConfigError.self) {
            try Environment(["X_FILE": dir.appendingPathComponent("missing").path]).string("X")
        }
        let empty = dir.appendingPathComponent("api_token")
        try "\n".write(to: empty, atomically: true, encoding: .utf8)
        // A secret file with no value is a mistake, not "no token": refused, with the variable's name.
        #expect {
            try ServiceConfig(service: "returns", process: "returns-api",
                              environment: Environment(["STEGA_API_TOKEN_FILE": empty.path]))
        } throws: { "\($0)".contains("STEGA_API_TOKEN_FILE") }
    }

    @Test("malformed settings are refused with the variable's name", arguments: [
        ["STEGA_QUEUE_MODE": "sometimes"], ["STEGA_EXCHANGE_TYPE": "fanout"], ["STEGA_HTTP_PORT": "http"],
        ["STEGA_HTTP_PORT": "70000"], ["STEGA_LOG_FORMAT": "xml"], ["STEGA_LOG_LEVEL": "loud"],
        ["STEGA_AMQP_URL": "http://x"],
    ])
    func refused(values: [String: String]) {
        do {
            _ = try ServiceConfig(service: "returns", process: "returns-api", environment: Environment(values))
            Issue.record("accepted \(values)")
        } catch let error as ConfigError {
            #expect(error.message.contains(values.keys.first!))
        } catch let error as AMQPError {
            // Only the URL is parsed by the AMQP layer.
            #expect(values.keys.first == "STEGA_AMQP_URL", "\(error)")
        } catch {
            Issue.record("\(values): \(error)")
        }
    }

    @Test("transient mode and topic exchange are read")
    func modes() throws {
        let config = try ServiceConfig(service: "returns", process: "returns-worker", environment: Environment([
            "STEGA_QUEUE_MODE": "transient", "STEGA_EXCHANGE_TYPE": "topic", "STEGA_LOG_FORMAT": "json",
        ]))
        #expect(config.queueMode == .transient)
        #expect(config.amqp.exchangeType == "topic")
        #expect(config.logFormat == .json)
    }
}

@Suite("Log lines")
struct LogLineTests {
    @Test("JSON lines carry the process, level, message and metadata")
    func json() throws {
        let line = LineLogHandler.render(process: "returns-worker", label: "l", format: .json, level: .info,
                                         message: "event handled",
                                         metadata: ["amqp.routing_key": "returns.events.prices_recorded",
                                                    "bus.correlation_id": "op-1"])
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
        #expect(object["service"] as? String == "returns-worker")
        #expect(object["level"] as? String == "info")
        #expect(object["message"] as? String == "event handled")
        #expect(object["bus.correlation_id"] as? String == "op-1")
        #expect(object["amqp.routing_key"] as? String == "returns.events.prices_recorded")
        #expect((object["ts"] as? String)?.hasSuffix("Z") == true)
        #expect(line.hasSuffix("\n"))
    }

    @Test("text lines put metadata after the message, sorted")
    func text() {
        let line = LineLogHandler.render(process: "returns-api", label: "l", format: .text, level: .warning,
                                         message: "hello", metadata: ["b": "2", "a": "1"])
        #expect(line.hasSuffix(" warning returns-api: hello a=1 b=2\n"))
    }
}
