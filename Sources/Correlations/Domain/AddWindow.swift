import EventCatalog
import MessageBus

/// Track a rolling correlation window of `window` daily returns.
public struct AddWindow: Command, Equatable {
    public var window: Int

    public init(window: Int) { self.window = window }

    /// Windows that can be tracked: 2 to 2520 returns (ten years of trading days).
    public static let range = EventLimits.windows

    /// `InvalidCommand` `invalid_window` when `window` is outside ``range``.
    public init(validating window: Int) throws(InvalidCommand) {
        guard Self.range.contains(window) else {
            throw InvalidCommand("invalid_window", "window must be between \(Self.range.lowerBound) and \(Self.range.upperBound)")
        }
        self.init(window: window)
    }
}
