import EventCatalog
import Foundation

/// One closing price.
public struct PricePoint: Codable, Sendable, Equatable {
    public var date: CalendarDate
    public var close: Double

    public init(date: CalendarDate, close: Double) {
        self.date = date
        self.close = close
    }
}

/// A daily return with both of its forms.
public struct DailyReturn: Sendable, Equatable {
    public var date: CalendarDate
    /// p(t) / p(t-1) − 1
    public var simple: Double
    /// ln(p(t) / p(t-1))
    public var log: Double

    public init(date: CalendarDate, simple: Double, log: Double) {
        self.date = date
        self.simple = simple
        self.log = log
    }
}

/// The returns arithmetic, free of storage.
public enum ReturnsMath {
    /// Daily returns of `prices` (sorted by date): one per price after the first, against
    /// the previous price on record (gaps in dates are not filled).
    public static func dailyReturns(_ prices: [PricePoint]) -> [DailyReturn] {
        guard prices.count > 1 else { return [] }
        var out: [DailyReturn] = []
        out.reserveCapacity(prices.count - 1)
        for i in 1..<prices.count {
            let ratio = prices[i].close / prices[i - 1].close
            out.append(DailyReturn(date: prices[i].date, simple: ratio - 1, log: Foundation.log(ratio)))
        }
        return out
    }
}

/// `GET /returns/{symbol}/summary`: statistics of a symbol's daily simple returns.
public struct ReturnsSummary: Codable, Sendable, Equatable {
    public var symbol: String
    /// Number of daily returns.
    public var count: Int
    /// Date of the first and of the last price.
    public var firstDate: CalendarDate
    public var lastDate: CalendarDate
    /// Mean daily simple return; `nil` without returns.
    public var mean: Double?
    /// Sample standard deviation (n − 1) of daily simple returns × √252; `nil` below 2 returns.
    public var volatility: Double?
    /// Π(1 + r) − 1; `nil` if it overflows a double (as `mean` and `volatility` are).
    public var cumulativeReturn: Double?
    /// The worst fall from a running peak of closes, as a fraction (≤ 0).
    public var maxDrawdown: Double

    enum CodingKeys: String, CodingKey {
        case symbol, count, mean, volatility
        case firstDate = "first_date"
        case lastDate = "last_date"
        case cumulativeReturn = "cumulative_return"
        case maxDrawdown = "max_drawdown"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(symbol, forKey: .symbol)
        try c.encode(count, forKey: .count)
        try c.encode(firstDate, forKey: .firstDate)
        try c.encode(lastDate, forKey: .lastDate)
        try c.encode(mean, forKey: .mean)  // null, not absent, without returns
        try c.encode(volatility, forKey: .volatility)
        try c.encode(cumulativeReturn, forKey: .cumulativeReturn)  // null, not absent, on overflow
        try c.encode(maxDrawdown, forKey: .maxDrawdown)
    }
}

extension ReturnsMath {
    /// The summary of `prices` (sorted by date, at least one) and their daily `returns`.
    public static func summary(symbol: String, prices: [PricePoint], returns: [Double]) -> ReturnsSummary {
        // Closes far apart give finite returns whose sum, square or product may not be: a
        // statistic that overflows is null rather than a 500 (JSON has no infinity).
        func finite(_ x: Double?) -> Double? { x.flatMap { $0.isFinite ? $0 : nil } }
        let n = returns.count
        var mean: Double?
        var volatility: Double?
        if n > 0 {
            // Two passes: the mean, then the squared deviations (stable for small returns).
            let m = returns.reduce(0, +) / Double(n)
            mean = m
            if n > 1 {
                let ss = returns.reduce(0) { $0 + ($1 - m) * ($1 - m) }
                volatility = (ss / Double(n - 1)).squareRoot() * Double(252).squareRoot()
            }
        }
        var growth = 1.0
        for r in returns { growth *= 1 + r }
        var peak = -Double.infinity
        var drawdown = 0.0
        for p in prices {
            peak = max(peak, p.close)
            drawdown = min(drawdown, p.close / peak - 1)
        }
        return ReturnsSummary(symbol: symbol, count: n, firstDate: prices.first!.date, lastDate: prices.last!.date,
                              mean: finite(mean), volatility: finite(volatility), cumulativeReturn: finite(growth - 1),
                              maxDrawdown: drawdown)
    }
}
