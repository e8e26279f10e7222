import Foundation
import Synchronization

/// How queues are declared and consumed (DESIGN.md "Delivery guarantees").
public enum QueueMode: String, Sendable, CaseIterable {
    /// Queue `<service>.events`, durable, manual ack after the handler; persistent messages.
    case durable
    /// The seed's mode: a server-named, exclusive, auto-delete queue consumed with auto-ack.
    case transient
}

/// The kind of RabbitMQ queue a service's durable queues are (`STEGA_QUEUE_TYPE`).
public enum QueueType: String, Sendable, CaseIterable {
    /// A classic queue: on one node.
    case classic
    /// A quorum queue: replicated over the cluster's nodes (Raft); a message confirmed to the
    /// publisher is on a majority of them.
    case quorum

    /// The declaration arguments of a queue of this type (a classic one without the
    /// argument, as before there was a choice).
    var arguments: [String: HeaderValue] {
        self == .quorum ? ["x-queue-type": .string("quorum")] : [:]
    }
}

/// Connection settings shared by publishers and consumers.
public struct AMQPSettings: Sendable, Equatable {
    /// The nodes of the broker (one, or several of one RabbitMQ cluster), in order: a
    /// connection goes to the first that answers; after a lost one, a publisher or consumer
    /// tries the node after the one it had first (see ``NodeCursor``).
    public var nodes: [AMQPURL]
    /// The first node (setting it makes it the only one).
    public var url: AMQPURL {
        get { nodes[0] }
        set { nodes = [newValue] }
    }
    /// The exchange every event goes through (`events`).
    public var exchange: String
    /// `direct` or `topic`.
    public var exchangeType: String
    /// Heartbeat interval asked of the broker, in seconds (0 disables).
    public var heartbeatSeconds: Int
    /// TLS: a CA certificate file to verify the broker with (`amqps://`).
    public var caCertificatePath: String?
    /// TLS: whether to verify the broker's certificate and host name.
    public var verifyPeer: Bool

    public init(url: AMQPURL = AMQPURL(), exchange: String = "events", exchangeType: String = "direct",
                heartbeatSeconds: Int = 30, caCertificatePath: String? = nil, verifyPeer: Bool = true) {
        self.init(nodes: [url], exchange: exchange, exchangeType: exchangeType, heartbeatSeconds: heartbeatSeconds,
                  caCertificatePath: caCertificatePath, verifyPeer: verifyPeer)
    }

    /// `nodes`: at least one (an empty list means the default node).
    public init(nodes: [AMQPURL], exchange: String = "events", exchangeType: String = "direct",
                heartbeatSeconds: Int = 30, caCertificatePath: String? = nil, verifyPeer: Bool = true) {
        self.nodes = nodes.isEmpty ? [AMQPURL()] : nodes
        self.exchange = exchange
        self.exchangeType = exchangeType
        self.heartbeatSeconds = heartbeatSeconds
        self.caCertificatePath = caCertificatePath
        self.verifyPeer = verifyPeer
    }
}

extension AMQPURL {
    /// Parses `STEGA_AMQP_URL`: one URL, or the nodes of a cluster separated by commas (a comma
    /// in a user name or password is written `%2C`); throws `AMQPError.invalidURL`.
    public static func list(parsing text: String) throws -> [AMQPURL] {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        guard !parts.contains(where: \.isEmpty) else {
            throw AMQPError(.invalidURL, "empty entry in a comma-separated list of broker URLs")
        }
        return try parts.map { try AMQPURL(parsing: $0) }
    }
}

/// Which of the broker's nodes a publisher or consumer connects to: at start the first that
/// answers; once connected to a node and then disconnected, the node after it first (the one
/// it had may be the one that went away), then the others in order, round.
final class NodeCursor: Sendable {
    private let count: Int
    /// The node of the last connection, or -1 before the first.
    private let current = Atomic<Int>(-1)

    init(nodes: Int) { count = max(1, nodes) }

    /// The order to try the nodes in now.
    var order: [Int] {
        let start = (current.load(ordering: .relaxed) + 1) % count
        return (0..<count).map { (start + $0) % count }
    }

    /// A connection to node `index` opened.
    func connected(to index: Int) { current.store(index, ordering: .relaxed) }

    /// The node of the last connection (0 before any).
    var node: Int { max(0, current.load(ordering: .relaxed)) }
}
