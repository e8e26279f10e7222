import AMQPTransport
import Foundation
import Testing

/// The broker of the integration tests: `make test` starts a throw-away RabbitMQ and sets
/// `STEGA_TEST_AMQP_URL` (and `STEGA_TEST_BROKER_DIR`, for rabbitmqctl). Run bare
/// (`swift test` with no broker), these tests are skipped, and the skip message says why.
enum Broker {
    static let url: String? = ProcessInfo.processInfo.environment["STEGA_TEST_AMQP_URL"]
    static let directory: String? = ProcessInfo.processInfo.environment["STEGA_TEST_BROKER_DIR"]
    static var available: Bool { url != nil }
    static var controllable: Bool { url != nil && directory != nil }
    static let skipReason: Comment = "STEGA_TEST_AMQP_URL is not set: no broker (make test starts one)"

    /// Settings on a fresh exchange, so parallel tests never see each other's events.
    static func settings(exchangeType: String = "direct") throws -> AMQPSettings {
        AMQPSettings(url: try AMQPURL(parsing: url ?? "amqp://127.0.0.1"),
                     exchange: "test-\(UUID().uuidString.prefix(8).lowercased())",
                     exchangeType: exchangeType, heartbeatSeconds: 10)
    }

    /// Runs `rabbitmqctl` against the test broker (through scripts/broker.sh), on a thread of
    /// its own: it takes a second or more (an Erlang VM starts), and waiting for it on the
    /// cooperative pool (two threads on two cores) held up every other suite's tasks.
    static func ctl(_ arguments: String...) async throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        return try await withCheckedThrowingContinuation { continuation in
            Thread {
                let process = Process()
                process.executableURL = root.appendingPathComponent("scripts/broker.sh")
                process.arguments = ["ctl", directory ?? "", "-q"] + arguments
                let pipe = Pipe()
                process.standardOutput = pipe
                process.standardError = FileHandle.nullDevice
                do {
                    try process.run()
                    let data = pipe.fileHandleForReading.readDataToEndOfFile()
                    process.waitUntilExit()
                    continuation.resume(returning: String(decoding: data, as: UTF8.self))
                } catch {
                    continuation.resume(throwing: error)
                }
            }.start()
        }
    }

    /// Closes, from the broker's side, the connections whose client port is in `ports`.
    static func closeConnections(clientPorts ports: Set<Int>) async throws -> Int {
        var closed = 0
        for line in try await ctl("list_connections", "pid", "peer_port").split(separator: "\n") {
            let fields = line.split(separator: "\t")
            guard fields.count == 2, let port = Int(fields[1]), ports.contains(port) else { continue }
            _ = try await ctl("close_connection", String(fields[0]), "closed by a reconnect test")
            closed += 1
        }
        return closed
    }
}
