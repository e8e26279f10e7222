/// Errors of the AMQP transport, with rabbitmq-c's or the server's text.
public struct AMQPError: Error, CustomStringConvertible, Equatable {
    /// What failed.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String {
            case invalidURL, connection, library, serverClosedChannel, serverClosedConnection
            case publishNacked, confirmTimeout, notConnected
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// `STEGA_AMQP_URL` could not be parsed.
        public static let invalidURL = Code(.invalidURL)
        /// The socket could not be opened or logged in.
        public static let connection = Code(.connection)
        /// rabbitmq-c returned an error status.
        public static let library = Code(.library)
        /// The server closed the channel (`channel.close`), e.g. 404 NOT_FOUND or 406 PRECONDITION_FAILED.
        public static let serverClosedChannel = Code(.serverClosedChannel)
        /// The server closed the connection (`connection.close`).
        public static let serverClosedConnection = Code(.serverClosedConnection)
        /// The broker answered a publish with `basic.nack`.
        public static let publishNacked = Code(.publishNacked)
        /// No confirm arrived in time.
        public static let confirmTimeout = Code(.confirmTimeout)
        /// The operation needs a connection and there is none.
        public static let notConnected = Code(.notConnected)

        public var description: String { value.rawValue }
    }

    public let code: Code
    /// The human text: rabbitmq-c's error string or the server's reply text.
    public let message: String
    /// The C function or AMQP method that failed.
    public let context: String

    public init(_ code: Code, _ message: String, context: String = "") {
        self.code = code
        self.message = message
        self.context = context
    }

    public var description: String {
        context.isEmpty ? "\(code): \(message)" : "\(context): \(code): \(message)"
    }
}
