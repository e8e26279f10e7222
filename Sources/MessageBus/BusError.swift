/// Errors of the message bus.
public struct BusError: Error, CustomStringConvertible, Equatable {
    /// What went wrong.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String { case noHandler, duplicateHandler, undecodable, handlersFailed, eventsNotStored, undeclaredEvent }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// No handler is registered for the command or routing key.
        public static let noHandler = Code(.noHandler)
        /// A second handler was registered for one command.
        public static let duplicateHandler = Code(.duplicateHandler)
        /// The message could not be decoded as the event its routing key names, or its
        /// payload breaks the event's rules (`Event.validate()`).
        public static let undecodable = Code(.undecodable)
        /// One or more event handlers threw.
        public static let handlersFailed = Code(.handlersFailed)
        /// A handler raised events and did not store them in its write's transaction.
        public static let eventsNotStored = Code(.eventsNotStored)
        /// A handler raised an event it did not declare when it was registered.
        public static let undeclaredEvent = Code(.undeclaredEvent)

        public var description: String { value.rawValue }
    }

    public let code: Code
    public let message: String
    /// The error a handler threw (`handlersFailed`): what the worker decides on (a store
    /// that is down is not the event's fault). Not part of equality.
    public let cause: (any Error)?

    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public static func == (lhs: BusError, rhs: BusError) -> Bool {
        lhs.code == rhs.code && lhs.message == rhs.message
    }

    public var description: String { "\(code): \(message)" }
}
