import EventCatalog
import MessageBus

/// Record closing prices of one or more symbols (an insert, or an update of a date on record).
public struct RecordPrices: Command, Equatable {
    /// Prices by symbol, each list sorted by date, no date twice.
    public var prices: [String: [PricePoint]]

    public init(prices: [String: [PricePoint]]) { self.prices = prices }

    /// At most this many prices in one request.
    public static let maxPoints = EventLimits.pricesPerWrite

    /// Closes that are accepted: any two of them have a ratio that is a finite number > 0
    /// (1e150 / 1e-150 = 1e300), so every daily return and its log are finite. `1e-300` next
    /// to `1e300` would give an infinite return; no traded price comes near either end.
    public static let closes = 1e-150...1e150

    /// Validates prices as they came (in a request body), sorting each symbol's by date:
    /// `InvalidCommand` for a bad symbol or date, a close out of ``closes``, a symbol or date
    /// twice, no prices, or more than ``maxPoints``.
    public init(validating raw: [(symbol: String, points: [(date: String, close: Double)])]) throws(InvalidCommand) {
        var bySymbol: [String: [PricePoint]] = [:]
        var total = 0
        for (symbol, items) in raw {
            guard Symbol.isValid(symbol) else {
                throw InvalidCommand("invalid_symbol", "symbol must match ^[A-Z0-9.\\-]{1,15}$, got \(symbol)")
            }
            guard bySymbol[symbol] == nil else {
                throw InvalidCommand("duplicate_symbol", "symbol \(symbol) appears twice")
            }
            guard !items.isEmpty else { throw InvalidCommand("empty_prices", "no prices for \(symbol)") }
            total += items.count
            guard total <= Self.maxPoints else {
                throw InvalidCommand("too_many_prices", "at most \(Self.maxPoints) prices per request")
            }
            var seen = Set<CalendarDate>()
            var list: [PricePoint] = []
            list.reserveCapacity(items.count)
            for (text, close) in items {
                guard let date = CalendarDate(text) else {
                    throw InvalidCommand("invalid_date", "\(text) is not a date in YYYY-MM-DD form that exists")
                }
                guard Self.closes.contains(close) else {
                    throw InvalidCommand("invalid_price", "close on \(text) must be a number from 1e-150 to 1e150 (finite, > 0)")
                }
                guard seen.insert(date).inserted else {
                    throw InvalidCommand("duplicate_date", "\(text) appears twice for \(symbol)")
                }
                list.append(PricePoint(date: date, close: close))
            }
            bySymbol[symbol] = list.sorted { $0.date < $1.date }
        }
        guard !bySymbol.isEmpty else { throw InvalidCommand("empty_prices", "no prices given") }
        self.init(prices: bySymbol)
    }
}
