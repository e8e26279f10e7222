import EventCatalog
import HTTPServer
import MessageBus

/// Track a rolling correlation window of `window` daily returns.
public struct AddWindow: Command, Equatable {
    public var window: Int

    public init(window: Int) { self.window = window }

    /// Windows that can be tracked: 2 to 2520 returns (ten years of trading days).
    public static let range = EventLimits.windows

    /// Parses `{"window": N}`: 400 `invalid_body` for JSON faults (a string, `60.5`), 422
    /// `invalid_window` out of range.
    public static func parse(body: [UInt8]) throws(HTTPError) -> AddWindow {
        let fields = try JSONValue.parseObject(body)
        guard let value = fields["window"] else { throw .invalidBody("missing field window") }
        guard case .number(let number, let integral) = value, integral, number.isFinite else {
            throw .invalidBody("window must be an integer, got \(value.typeName == "number" ? "a fraction" : value.typeName)")
        }
        guard let window = Int(exactly: number), range.contains(window) else {
            throw .unprocessable("invalid_window", "window must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return AddWindow(window: window)
    }
}
