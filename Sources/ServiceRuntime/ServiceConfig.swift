import AMQPTransport
import EventCatalog
import Foundation
import Logging
import MessageBus

/// Every setting of an api or worker process (DESIGN.md "Configuration").
public struct ServiceConfig: Sendable {
    /// `returns`, `correlations`, …
    public var service: String
    /// `returns-api`, `returns-worker`, …
    public var process: String
    public var amqp: AMQPSettings
    public var queueMode: QueueMode
    /// `STEGA_QUEUE_TYPE`: what the worker's durable queues are declared as.
    public var queueType: QueueType
    public var prefetch: Int
    public var batchSize: Int
    public var maxInFlightBytes: Int
    public var retryAttempts: Int
    public var retryDelayMs: Int
    public var retryMaxDelayMs: Int
    public var httpHost: String
    public var httpPort: Int
    public var httpThreads: Int
    public var maxBodyBytes: Int
    public var dataDirectory: String
    /// `STEGA_DATABASE_URL` (with `STEGA_DB_POOL`): the service's store in PostgreSQL; `nil`:
    /// the SQLite file under ``dataDirectory``.
    public var postgres: PostgresSettings?
    public var logLevel: Logger.Level
    public var logFormat: LogFormat
    /// Bearer token required by write endpoints (`STEGA_API_TOKEN` or `STEGA_API_TOKEN_FILE`); none when unset.
    public var apiToken: String?

    /// The default HTTP port of each process.
    public static let defaultPorts: [String: Int] = [
        "boundary": 8080, "returns-api": 8081, "correlations-api": 8082,
        "returns-worker": 9081, "correlations-worker": 9082,
    ]

    /// Reads the configuration of `process` (of `service`) from `environment`.
    public init(service: String, process: String, environment: Environment = Environment()) throws {
        self.service = service
        self.process = process
        // One broker node, or the nodes of a cluster, comma-separated (DESIGN.md "Scale-out").
        let nodes = try AMQPURL.list(parsing: environment.string("STEGA_AMQP_URL",
                                                                 default: "amqp://guest:guest@127.0.0.1:5672"))
        amqp = AMQPSettings(
            nodes: nodes,
            exchange: try environment.string("STEGA_EXCHANGE", default: "events"),
            exchangeType: try environment.choice("STEGA_EXCHANGE_TYPE", default: "direct", ["direct", "topic"]),
            heartbeatSeconds: try environment.int("STEGA_AMQP_HEARTBEAT", default: 30, range: 0...3600),
            caCertificatePath: try environment.string("STEGA_AMQP_CACERT"),
            verifyPeer: try environment.choice("STEGA_AMQP_VERIFY", default: "true", ["true", "false"]) == "true")
        queueMode = QueueMode(rawValue: try environment.choice(
            "STEGA_QUEUE_MODE", default: "durable", QueueMode.allCases.map(\.rawValue)))!
        queueType = QueueType(rawValue: try environment.choice(
            "STEGA_QUEUE_TYPE", default: "classic", QueueType.allCases.map(\.rawValue)))!
        if queueType == .quorum, queueMode != .durable {
            // The seed's transient queue is exclusive and auto-delete: it cannot be a quorum queue.
            throw ConfigError("STEGA_QUEUE_TYPE=quorum needs STEGA_QUEUE_MODE=durable")
        }
        batchSize = try environment.int("STEGA_BATCH_SIZE", default: 256, range: 1...65535)
        maxInFlightBytes = try environment.int("STEGA_BATCH_BYTES", default: 4 << 20, range: 1024...(1 << 30))
        // Twice the batch by default: the next batch arrives while one is handled.
        prefetch = try environment.int("STEGA_PREFETCH", default: min(65535, 2 * batchSize), range: 1...65535)
        retryAttempts = try environment.int("STEGA_RETRY_ATTEMPTS", default: 5, range: 1...100)
        retryDelayMs = try environment.int("STEGA_RETRY_DELAY_MS", default: 1000, range: 1...3_600_000)
        retryMaxDelayMs = try environment.int("STEGA_RETRY_MAX_DELAY_MS", default: 60_000, range: 1...86_400_000)
        httpHost = try environment.string("STEGA_HTTP_HOST", default: "127.0.0.1")
        httpPort = try environment.int("STEGA_HTTP_PORT", default: Self.defaultPorts[process] ?? 8080,
                                       range: 0...65535)
        httpThreads = try environment.int("STEGA_HTTP_THREADS",
                                          default: max(2, ProcessInfo.processInfo.activeProcessorCount),
                                          range: 1...256)
        maxBodyBytes = try environment.int("STEGA_MAX_BODY_BYTES", default: 8 * 1024 * 1024,
                                           range: 1024...(1 << 30))
        dataDirectory = try environment.string("STEGA_DATA_DIR", default: "./data")
        let poolSize = try environment.int("STEGA_DB_POOL", default: 4, range: 1...200)
        postgres = try environment.string("STEGA_DATABASE_URL").map { try PostgresSettings(url: $0, poolSize: poolSize) }
        let level = try environment.choice("STEGA_LOG_LEVEL", default: "info",
                                           Logger.Level.allCases.map(\.rawValue))
        logLevel = Logger.Level(rawValue: level)!
        apiToken = try environment.string("STEGA_API_TOKEN")
        logFormat = LogFormat(rawValue: try environment.choice("STEGA_LOG_FORMAT", default: "text",
                                                               LogFormat.allCases.map(\.rawValue)))!
    }

    /// The worker's retry policy (`STEGA_RETRY_*`; no retries in transient mode), whose dead
    /// letters raise `failureEvent`.
    public func retryPolicy(failureEvent: (any OperationFailedEvent.Type)?) -> RetryPolicy {
        guard queueMode == .durable else { return .noRetries(failureEvent: failureEvent) }
        return RetryPolicy(maxAttempts: retryAttempts, baseDelayMs: retryDelayMs, maxDelayMs: retryMaxDelayMs,
                           failureEvent: failureEvent)
    }

    /// The worker's queue, following `policy`; with `singleActiveConsumer`, one replica at a
    /// time consumes it (see `AMQPConsumer.QueueSpec`).
    public func queueSpec(policy: RetryPolicy, singleActiveConsumer: Bool = false) -> AMQPConsumer.QueueSpec {
        AMQPConsumer.QueueSpec(service: service, mode: queueMode, prefetch: UInt16(prefetch), policy: policy,
                               batchSize: batchSize, maxInFlightBytes: maxInFlightBytes, queueType: queueType,
                               singleActiveConsumer: singleActiveConsumer)
    }

    /// The SQLite file of the service, shared by its api and worker.
    public var databasePath: String {
        URL(fileURLWithPath: dataDirectory).appendingPathComponent("\(service).sqlite").path
    }
}
