/// A command whose values break its rules (a symbol out of pattern, a window out of range):
/// a domain error, with a stable `code` (`invalid_symbol`) a route answers as 422. Not a
/// ``BusError`` (the module's own error): commands throw it while they are built, before the
/// bus sees them, and its codes are the API's, open-ended per command.
public struct InvalidCommand: Error, Equatable, CustomStringConvertible {
    /// Stable, snake_case: what clients branch on.
    public let code: String
    public let message: String

    public init(_ code: String, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
