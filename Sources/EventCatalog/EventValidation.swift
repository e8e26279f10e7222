/// The rules a consumed payload must keep before any handler does arithmetic with it: the
/// same as the REST input's (DESIGN.md, "Limits on untrusted input"). A payload that decodes
/// but breaks them is dead-lettered at once, never retried.
public enum EventLimits {
    /// Windows that can be tracked: 2 to 2520 returns (ten years of trading days).
    public static let windows = 2...2520
    /// Prices in one write at most (and so in one `prices_recorded`).
    public static let pricesPerWrite = 100_000
    /// Returns in one `returns_calculated` at most: every day of years 1–9999.
    public static let returnsPerEvent = 3_652_059
    /// Symbols in one `correlations_updated` at most.
    public static let symbolsPerEvent = 100_000
}

/// A payload that decodes but breaks the catalog's rules.
public struct InvalidEvent: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension PricesRecorded {
    public func validate() throws {
        try Self.check(symbol: symbol)
        guard firstDate <= lastDate else { throw InvalidEvent("first_date \(firstDate) is after last_date \(lastDate)") }
        guard (1...EventLimits.pricesPerWrite).contains(count) else {
            throw InvalidEvent("count must be 1...\(EventLimits.pricesPerWrite), got \(count)")
        }
    }
}

extension ReturnsCalculated {
    public func validate() throws {
        try Self.check(symbol: symbol)
        guard returns.count <= EventLimits.returnsPerEvent else {
            throw InvalidEvent("at most \(EventLimits.returnsPerEvent) returns, got \(returns.count)")
        }
        var previous: CalendarDate?
        for r in returns {
            // A simple return of two positive closes is finite and at least -1 (it rounds to
            // -1 when the later close is below 2^-53 of the earlier).
            guard r.value.isFinite, r.value >= -1 else {
                throw InvalidEvent("the return on \(r.date) must be a finite number >= -1, got \(r.value)")
            }
            if let previous, r.date <= previous { throw InvalidEvent("returns must be in ascending date order, no date twice") }
            previous = r.date
        }
    }
}

extension WindowAdded {
    public func validate() throws {
        guard EventLimits.windows.contains(window) else {
            throw InvalidEvent("window must be \(EventLimits.windows.lowerBound)...\(EventLimits.windows.upperBound), got \(window)")
        }
    }
}

extension CorrelationsUpdated {
    public func validate() throws {
        guard symbols.count <= EventLimits.symbolsPerEvent else { throw InvalidEvent("too many symbols") }
        for symbol in symbols { try Self.check(symbol: symbol) }
        for window in windows where !EventLimits.windows.contains(window) {
            throw InvalidEvent("window must be \(EventLimits.windows.lowerBound)...\(EventLimits.windows.upperBound), got \(window)")
        }
        guard pairs >= 0 else { throw InvalidEvent("pairs must be >= 0, got \(pairs)") }
    }
}

extension Event {
    static func check(symbol: String) throws {
        guard Symbol.isValid(symbol) else { throw InvalidEvent("symbol must match ^[A-Z0-9.\\-]{1,15}$, got \(symbol)") }
    }
}
