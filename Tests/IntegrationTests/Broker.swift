import AMQPTransport
import Foundation
import Testing

/// The broker of the integration tests: `make test` starts a throw-away RabbitMQ and sets
/// `STEGA_TEST_AMQP_URL`. Run bare (`swift test` with no broker), these tests are skipped,
/// and the skip message says why.
enum Broker {
    static let url: String? = ProcessInfo.processInfo.environment["STEGA_TEST_AMQP_URL"]
    static var available: Bool { url != nil }
    static let skipReason: Comment = "STEGA_TEST_AMQP_URL is not set: no broker (make test starts one)"

    /// Settings on a fresh exchange, so parallel tests never see each other's events.
    static func settings(exchangeType: String = "direct") throws -> AMQPSettings {
        AMQPSettings(url: try AMQPURL(parsing: url ?? "amqp://127.0.0.1"),
                     exchange: "test-\(UUID().uuidString.prefix(8).lowercased())",
                     exchangeType: exchangeType, heartbeatSeconds: 10)
    }
}
