import EventCatalog

/// A symbol's daily returns, sorted by date, as day numbers and values.
public struct ReturnSeries: Sendable, Equatable {
    public var days: [Int32]
    public var values: [Double]

    public init(days: [Int32] = [], values: [Double] = []) {
        self.days = days
        self.values = values
    }

    public var count: Int { days.count }
    public var lastDay: Int32? { days.last }
}

/// One correlation value with what it was computed from.
public struct PairCorrelation: Sendable, Equatable {
    /// Pearson's r, or `nil` with fewer than `window` common returns or a zero variance.
    public var value: Double?
    /// Common returns used (at most the window).
    public var observations: Int
    /// The last common date used, as a day number.
    public var asOfDay: Int32?
}

/// Pearson correlation over the latest common dates of two return series.
public enum CorrelationMath {
    /// The correlation of `a` and `b` over their latest `window` common dates.
    public static func pair(_ a: ReturnSeries, _ b: ReturnSeries, window: Int) -> PairCorrelation {
        pair(a, complete: true, b, complete: true, window: window)!
    }

    /// ``pair(_:_:window:)`` of series that may hold only a symbol's latest returns (not
    /// `complete`): `nil` when such a series ran out before `window` common dates were found —
    /// older returns could then change the answer; compute it again on the whole series. A
    /// complete series running out first settles it: every one of its dates was compared.
    public static func pair(_ a: ReturnSeries, complete aComplete: Bool, _ b: ReturnSeries, complete bComplete: Bool,
                            window: Int) -> PairCorrelation? {
        var i = a.count - 1, j = b.count - 1
        var xs = [Double](), ys = [Double]()
        xs.reserveCapacity(window)
        ys.reserveCapacity(window)
        var asOf: Int32?
        while i >= 0, j >= 0, xs.count < window {
            let da = a.days[i], db = b.days[j]
            if da == db {
                if asOf == nil { asOf = da }
                xs.append(a.values[i])
                ys.append(b.values[j])
                i -= 1
                j -= 1
            } else if da > db {
                i -= 1
            } else {
                j -= 1
            }
        }
        guard xs.count == window else {
            if (i < 0 && !aComplete) || (j < 0 && !bComplete) { return nil }
            return PairCorrelation(value: nil, observations: xs.count, asOfDay: asOf)
        }
        return PairCorrelation(value: pearson(xs, ys), observations: window, asOfDay: asOf)
    }

    /// The diagonal: 1 when `a` has `window` returns with a non-zero variance, else `nil`.
    public static func diagonal(_ a: ReturnSeries, window: Int) -> PairCorrelation {
        let n = min(window, a.count)
        guard n == window, window >= 2 else { return PairCorrelation(value: nil, observations: n, asOfDay: a.lastDay) }
        let tail = Array(a.values.suffix(window))
        return PairCorrelation(value: pearson(tail, tail) == nil ? nil : 1.0, observations: n, asOfDay: a.lastDay)
    }

    /// Pearson's r of two equally long samples (two-pass, centred), clipped to [−1, 1];
    /// `nil` when either variance is zero.
    public static func pearson(_ x: [Double], _ y: [Double]) -> Double? {
        let n = x.count
        guard n >= 2, y.count == n else { return nil }
        var mx = 0.0, my = 0.0
        for k in 0..<n {
            mx += x[k]
            my += y[k]
        }
        mx /= Double(n)
        my /= Double(n)
        var sxy = 0.0, sxx = 0.0, syy = 0.0
        for k in 0..<n {
            let dx = x[k] - mx, dy = y[k] - my
            sxy += dx * dy
            sxx += dx * dx
            syy += dy * dy
        }
        guard sxx > 0, syy > 0 else { return nil }
        return max(-1, min(1, sxy / (sxx * syy).squareRoot()))
    }
}
