/// The pairs of one window among symbols given by index, made once per batch. The latest
/// common dates of a pair end at the earlier of the two symbols' last days (its *cut*); when
/// both symbols' latest `window` returns up to that cut fall on the same dates — the common
/// case: symbols of one market calendar, some of them a day ahead while a day comes in — the
/// pair is a dot product of two unit vectors (each symbol's returns up to the cut, centred
/// and scaled to unit norm, made once per symbol and cut: what `corrcoef` does). The rest is
/// left to ``CorrelationMath/pair(_:complete:_:complete:window:)``, which finds a pair's
/// latest common dates one by one.
struct WindowPairs {
    let window: Int
    private let lastDay: [Int32?]
    /// The unit vectors of each cut (a last day of some symbol), for the most common cuts.
    private var cuts: [Int32: Cut] = [:]

    private struct Cut {
        /// Row `i`: symbol `i`'s latest `window` returns up to the cut, unit vector.
        var unit: [Double]
        /// Symbols with the same latest `window` dates up to the cut share a group; -1: fewer
        /// returns than that.
        var group: [Int]
        var zeroVariance: [Bool]
        /// The day the group's dates end on.
        var end: [Int32]
    }

    /// At most this many cuts get unit vectors (each costs a vector per symbol: 1 MB for 500
    /// symbols over 252 days); two cover a day coming in (the symbols that have it and those
    /// that do not yet).
    static let maxCuts = 2

    init(window: Int, series: [ReturnSeries]) {
        self.window = window
        lastDay = series.map(\.lastDay)
        guard window >= 2 else { return }
        var counts: [Int32: Int] = [:]
        for case let day? in lastDay { counts[day, default: 0] += 1 }
        for (cut, _) in counts.sorted(by: { ($0.value, $0.key) > ($1.value, $1.key) }).prefix(Self.maxCuts) {
            cuts[cut] = Self.cut(at: cut, window: window, series)
        }
    }

    private static func cut(at day: Int32, window: Int, _ series: [ReturnSeries]) -> Cut {
        let n = series.count
        var cut = Cut(unit: [Double](repeating: 0, count: n * window), group: [Int](repeating: -1, count: n),
                      zeroVariance: [Bool](repeating: false, count: n), end: [Int32](repeating: 0, count: n))
        var groups: [ArraySlice<Int32>: Int] = [:]
        for (i, s) in series.enumerated() {
            guard let last = s.lastDay, last >= day else { continue }
            // The number of returns up to the cut: past the last one on or before it.
            var lo = 0, hi = s.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if s.days[mid] <= day { lo = mid + 1 } else { hi = mid }
            }
            guard lo >= window else { continue }
            let days = s.days[(lo - window)..<lo]
            if let id = groups[days] {
                cut.group[i] = id
            } else {
                cut.group[i] = groups.count
                groups[days] = groups.count
            }
            cut.end[i] = s.days[lo - 1]
            let values = s.values[(lo - window)..<lo]
            var mean = 0.0
            for v in values { mean += v }
            mean /= Double(window)
            var squares = 0.0
            for v in values { squares += (v - mean) * (v - mean) }
            guard squares > 0 else {
                cut.zeroVariance[i] = true
                continue
            }
            let scale = 1 / squares.squareRoot()
            cut.unit.withUnsafeMutableBufferPointer { u in
                var k = i * window
                for v in values {
                    u[k] = (v - mean) * scale
                    k += 1
                }
            }
        }
        return cut
    }

    /// The pair `(i, j)` when both have their latest `window` returns up to the pair's cut on
    /// the same dates; `nil`: compute it from the series.
    func aligned(_ i: Int, _ j: Int) -> PairCorrelation? {
        guard let a = lastDay[i], let b = lastDay[j], let cut = cuts[min(a, b)] else { return nil }
        guard cut.group[i] >= 0, cut.group[i] == cut.group[j] else { return nil }
        guard !cut.zeroVariance[i], !cut.zeroVariance[j] else {
            return PairCorrelation(value: nil, observations: window, asOfDay: cut.end[i])
        }
        let r = cut.unit.withUnsafeBufferPointer { u in
            let a = u.baseAddress! + i * window, b = u.baseAddress! + j * window
            // Four sums, so the loop keeps several multiply-adds in flight (and vectorises).
            var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
            var k = 0
            while k + 4 <= window {
                s0 += a[k] * b[k]
                s1 += a[k + 1] * b[k + 1]
                s2 += a[k + 2] * b[k + 2]
                s3 += a[k + 3] * b[k + 3]
                k += 4
            }
            while k < window {
                s0 += a[k] * b[k]
                k += 1
            }
            return (s0 + s1) + (s2 + s3)
        }
        return PairCorrelation(value: max(-1, min(1, r)), observations: window, asOfDay: cut.end[i])
    }
}
