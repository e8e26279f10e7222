/// How queues are declared and consumed (DESIGN.md "Delivery guarantees").
public enum QueueMode: String, Sendable, CaseIterable {
    /// Queue `<service>.events`, durable, manual ack after the handler; persistent messages.
    case durable
    /// The seed's mode: a server-named, exclusive, auto-delete queue consumed with auto-ack.
    case transient
}

/// Connection settings shared by publishers and consumers.
public struct AMQPSettings: Sendable, Equatable {
    public var url: AMQPURL
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
        self.url = url
        self.exchange = exchange
        self.exchangeType = exchangeType
        self.heartbeatSeconds = heartbeatSeconds
        self.caCertificatePath = caCertificatePath
        self.verifyPeer = verifyPeer
    }
}
