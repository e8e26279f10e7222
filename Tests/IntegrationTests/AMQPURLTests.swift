import AMQPTransport
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
