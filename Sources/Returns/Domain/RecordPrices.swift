import EventCatalog
import HTTPServer
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

    /// Builds the command from a request body, reporting faults as DESIGN.md orders them:
    /// shape and JSON types first (400 `invalid_body`), then values (422).
    ///
    /// Accepted bodies: `{"symbol":"AAPL","prices":[{"date":"2024-01-02","close":185.64}]}`,
    /// or several symbols at once: `{"prices":{"AAPL":[…],"MSFT":[…]}}`.
    public static func parse(body: [UInt8]) throws(HTTPError) -> RecordPrices {
        let fields = try JSONValue.parseObject(body)
        var raw: [(symbol: String, points: [(date: String, close: Double)])] = []
        switch (fields["symbol"], fields["prices"]) {
        case (.string(let symbol), .array(let items)?):
            raw.append((symbol, try points(items, at: "prices")))
        case (.some(let symbol), _) where symbol.typeName != "string":
            throw .invalidBody("symbol must be a string, got \(symbol.typeName)")
        case (.some, .some(let other)):
            throw .invalidBody("prices must be an array, got \(other.typeName)")
        case (.some, nil):
            throw .invalidBody("missing field prices")
        case (nil, .object(let bySymbol)?):
            for symbol in bySymbol.keys.sorted() {
                guard case .array(let items) = bySymbol[symbol]! else {
                    throw .invalidBody("prices.\(symbol) must be an array")
                }
                raw.append((symbol, try points(items, at: "prices.\(symbol)")))
            }
        case (nil, _):
            throw .invalidBody("missing field symbol")
        }

        // Values.
        var bySymbol: [String: [PricePoint]] = [:]
        var total = 0
        for (symbol, items) in raw {
            guard Symbol.isValid(symbol) else {
                throw .unprocessable("invalid_symbol", "symbol must match ^[A-Z0-9.\\-]{1,15}$, got \(symbol)")
            }
            guard bySymbol[symbol] == nil else {
                throw .unprocessable("duplicate_symbol", "symbol \(symbol) appears twice")
            }
            guard !items.isEmpty else { throw .unprocessable("empty_prices", "no prices for \(symbol)") }
            total += items.count
            guard total <= maxPoints else {
                throw .unprocessable("too_many_prices", "at most \(maxPoints) prices per request")
            }
            var seen = Set<CalendarDate>()
            var list: [PricePoint] = []
            list.reserveCapacity(items.count)
            for (text, close) in items {
                guard let date = CalendarDate(text) else {
                    throw .unprocessable("invalid_date", "\(text) is not a date in YYYY-MM-DD form that exists")
                }
                guard closes.contains(close) else {
                    throw .unprocessable("invalid_price", "close on \(text) must be a number from 1e-150 to 1e150 (finite, > 0)")
                }
                guard seen.insert(date).inserted else {
                    throw .unprocessable("duplicate_date", "\(text) appears twice for \(symbol)")
                }
                list.append(PricePoint(date: date, close: close))
            }
            bySymbol[symbol] = list.sorted { $0.date < $1.date }
        }
        guard !bySymbol.isEmpty else { throw .unprocessable("empty_prices", "no prices given") }
        return RecordPrices(prices: bySymbol)
    }

    private static func points(_ items: [JSONValue], at path: String) throws(HTTPError) -> [(date: String, close: Double)] {
        var out: [(date: String, close: Double)] = []
        out.reserveCapacity(items.count)
        for (i, item) in items.enumerated() {
            guard case .object(let point) = item else {
                throw .invalidBody("\(path)[\(i)] must be an object with date and close")
            }
            guard case .string(let date)? = point["date"] else {
                throw .invalidBody("\(path)[\(i)].date must be a string")
            }
            guard case .number(let close, _)? = point["close"] else {
                throw .invalidBody("\(path)[\(i)].close must be a number")
            }
            out.append((date, close))
        }
        return out
    }
}
