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
