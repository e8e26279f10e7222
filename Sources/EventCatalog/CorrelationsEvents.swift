/// A rolling window is now tracked by the correlations service.
public struct WindowAdded: Event {
    public static let routingKey = "correlations.events.window_added"

    public var window: Int

    public init(window: Int) { self.window = window }
}

/// Correlations were recomputed (emitted even when nothing changed, so every write resolves).
public struct CorrelationsUpdated: Event {
    public static let routingKey = "correlations.events.correlations_updated"

    public var symbols: [String]
    public var windows: [Int]
    public var asOf: CalendarDate?
    public var pairs: Int

    public init(symbols: [String], windows: [Int], asOf: CalendarDate?, pairs: Int) {
        self.symbols = symbols
        self.windows = windows
        self.asOf = asOf
        self.pairs = pairs
    }

    enum CodingKeys: String, CodingKey {
        case symbols, windows, pairs
        case asOf = "as_of"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(symbols, forKey: .symbols)
        try c.encode(windows, forKey: .windows)
        try c.encode(asOf, forKey: .asOf)  // null, not absent, before any return
        try c.encode(pairs, forKey: .pairs)
    }
}

/// An operation started at the correlations service failed.
public struct CorrelationsOperationFailed: OperationFailedEvent {
    public static let routingKey = "correlations.events.operation_failed"

    public var failure: OperationFailure

    public init(_ failure: OperationFailure) { self.failure = failure }
}
