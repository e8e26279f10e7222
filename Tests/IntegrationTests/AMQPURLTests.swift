@testable import AMQPTransport
import MessageBusTesting
import Testing

@Suite("AMQP URLs")
struct AMQPURLTests {
    @Test("no path is vhost /; %2F is /; a path is its vhost", arguments: [
        ("amqp://guest:guest@127.0.0.1:5672", "/"),
        ("amqp://guest:guest@127.0.0.1:5672/", "/"),
        ("amqp://guest:guest@127.0.0.1:5672/%2F", "/"),
        ("amqp://u:p@h/prod", "prod"),
        ("amqp://u:p@h/a%2Fb", "a/b"),
    ])
    func vhost(url: String, vhost: String) throws {
        #expect(try AMQPURL(parsing: url).vhost == vhost)
    }

    @Test("credentials, host, ports and TLS")
    func parts() throws {
        let url = try AMQPURL(parsing: "amqps://us%40er:p%3Ass@broker.example:5999/v")
        #expect(url.user == "us@er")
        #expect(url.password == "p:ss")
        #expect(url.host == "broker.example")
        #expect(url.port == 5999)
        #expect(url.tls)
        #expect(try AMQPURL(parsing: "amqps://h").port == 5671)
        #expect(try AMQPURL(parsing: "amqp://h").port == 5672)
        #expect(!url.description.contains("p:ss"))
    }

    @Test("other schemes are refused", arguments: ["http://h", "h:5672", ""])
    func refused(text: String) {
        #expect(throws: AMQPError.self) { try AMQPURL(parsing: text) }
    }
}

@Suite("Broker node lists (STEGA_AMQP_URL with several nodes)")
struct AMQPNodeListTests {
    @Test("one URL, or several separated by commas (spaces around them ignored), each parsed alone")
    func list() throws {
        #expect(try AMQPURL.list(parsing: "amqp://u:p@h1:5672") == [AMQPURL(user: "u", password: "p", host: "h1")])
        let nodes = try AMQPURL.list(parsing: "amqp://u:p@h1:5672, amqps://u:p%2Cq@h2:5999/v ,amqp://h3")
        #expect(nodes.map(\.host) == ["h1", "h2", "h3"])
        #expect(nodes[1].password == "p,q" && nodes[1].tls && nodes[1].port == 5999 && nodes[1].vhost == "v")
        #expect(nodes[2].port == 5672)
    }

    @Test("an empty entry or a bad URL in the list is refused", arguments: [
        "amqp://h1,", ",amqp://h1", "amqp://h1,,amqp://h2", "amqp://h1,http://h2", "amqp://h1, ",
    ])
    func refused(text: String) {
        #expect(throws: AMQPError.self) { try AMQPURL.list(parsing: text) }
    }

    @Test("the order nodes are tried in: all from the first at start, from the one after the last connection's node after that")
    func order() {
        let cursor = NodeCursor(nodes: 3)
        #expect(cursor.order == [0, 1, 2] && cursor.node == 0)
        cursor.connected(to: 1)
        #expect(cursor.order == [2, 0, 1] && cursor.node == 1)
        cursor.connected(to: 2)
        #expect(cursor.order == [0, 1, 2])
        #expect(NodeCursor(nodes: 1).order == [0])
    }
}

@Suite("Failing over between broker nodes (real RabbitMQ)", .enabled(if: Broker.controllable, Broker.skipReason))
struct AMQPFailoverTests {
    @Test("publisher and consumer connect to the first node that answers, and after their node drops them, to the next; nothing published is lost")
    func failover() async throws {
        // Three "nodes": one where nothing listens, then the test broker under two names (a
        // cluster's nodes are distinct brokers; which one a client is on is what is tested).
        let live = try AMQPURL(parsing: Broker.url ?? "amqp://127.0.0.1")
        var other = live
        other.host = "localhost"
        var dead = live
        dead.port = 1
        var settings = try Broker.settings()
        settings.nodes = [dead, live, other]
        let fixture = AMQPFixture(settings: settings, mode: .durable)
        // Publishes before and after the drop, and waits for both deliveries.
        try await TransportConformance.reconnect(fixture)
        let publishers = fixture.publishers.withLock { $0 }
        #expect(!publishers.isEmpty)
        for publisher in publishers { #expect(publisher.node == 2) }
        #expect(fixture.consumers.withLock { $0.map(\.node) } == [2])
    }
}
