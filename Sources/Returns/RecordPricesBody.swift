import EventCatalog
import HTTPServer
import MessageBus

/// The body of `POST /prices` → ``RecordPrices``, with faults in the order DESIGN.md gives:
/// shape and JSON types first (400 `invalid_body`), then values (422, from the command's rules).
///
/// Accepted bodies: `{"symbol":"AAPL","prices":[{"date":"2024-01-02","close":185.64}]}`,
/// or several symbols at once: `{"prices":{"AAPL":[…],"MSFT":[…]}}`.
public enum RecordPricesBody {
    public static func parse(_ body: [UInt8]) throws(HTTPError) -> RecordPrices {
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

        do {
            return try RecordPrices(validating: raw)
        } catch {
            throw .unprocessable(error.code, error.message)
        }
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
