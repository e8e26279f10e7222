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
    private let n: Int
    /// Each symbol's last day (`Int32.min`: no returns).
    private let lastDay: [Int32]
    /// The cut each symbol's last day is, as an index of the cuts given vectors (-1: none).
    private let cutOf: [Int]
    /// For cut `c` and symbol `i`, at `c * n + i` (at `(c * n + i) * window` for `unit`): the
    /// symbol's latest `window` returns up to the cut as a unit vector; its group (symbols
    /// with the same latest `window` dates up to the cut share one; -1: fewer returns than
    /// that); the day those dates end on; whether they have a zero variance (its pairs are
    /// `null`). One array of each for all cuts, so a row's loop looks them up without copies.
    private var unit: [Double] = []
    private var group: [Int32] = []
    private var end: [Int32] = []
    private var zeroVariance: [Bool] = []

    /// At most this many cuts get unit vectors (each costs a vector per symbol: 1 MB for 500
    /// symbols over 252 days); two cover a day coming in (the symbols that have it and those
    /// that do not yet).
    static let maxCuts = 2

    init(window: Int, series: [ReturnSeries]) {
        self.window = window
        n = series.count
        let lastDay = series.map { $0.lastDay ?? .min }
        self.lastDay = lastDay
        var counts: [Int32: Int] = [:]
        if window >= 2 {
            for day in lastDay where day != .min { counts[day, default: 0] += 1 }
        }
        let chosen = counts.sorted(by: { ($0.value, $0.key) > ($1.value, $1.key) }).prefix(Self.maxCuts).map(\.key)
        cutOf = lastDay.map { day in chosen.firstIndex(of: day) ?? -1 }
        unit = [Double](repeating: 0, count: chosen.count * n * window)
        group = [Int32](repeating: -1, count: chosen.count * n)
        end = [Int32](repeating: 0, count: chosen.count * n)
        zeroVariance = [Bool](repeating: false, count: chosen.count * n)
        for (c, day) in chosen.enumerated() { makeCut(c, at: day, series) }
    }

    private mutating func makeCut(_ c: Int, at day: Int32, _ series: [ReturnSeries]) {
        var groups: [ArraySlice<Int32>: Int32] = [:]
        // The dates of the group met last: most symbols share one, compared before hashing.
        var last: (days: ArraySlice<Int32>, id: Int32)?
        for (i, s) in series.enumerated() {
            guard let lastOfSeries = s.lastDay, lastOfSeries >= day else { continue }
            // The number of returns up to the cut: past the last one on or before it.
            var lo = 0, hi = s.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if s.days[mid] <= day { lo = mid + 1 } else { hi = mid }
            }
            guard lo >= window else { continue }
            let at = c * n + i
            let days = s.days[(lo - window)..<lo]
            if let last, last.days == days {
                group[at] = last.id
            } else {
                let id = groups[days] ?? Int32(groups.count)
                groups[days] = id
                group[at] = id
                last = (days, id)
            }
            end[at] = s.days[lo - 1]
            let values = s.values[(lo - window)..<lo]
            var mean = 0.0
            for v in values { mean += v }
            mean /= Double(window)
            var squares = 0.0
            for v in values { squares += (v - mean) * (v - mean) }
            guard squares > 0 else {
                zeroVariance[at] = true
                continue
            }
            let scale = 1 / squares.squareRoot()
            let window = self.window
            unit.withUnsafeMutableBufferPointer { u in
                var k = at * window
                for v in values {
                    u[k] = (v - mean) * scale
                    k += 1
                }
            }
        }
    }

    /// Sets the cells `(i, j)` of row `i`, for `j` in `columns`, that the unit vectors settle;
    /// appends the others to `unsettled`. The work of a backfill: one call per row, so what a
    /// pair needs is looked up without a copy or a hash.
    func fill(row i: Int, columns: some Sequence<Int>, into cells: CorrelationRow.UnsafeCells,
              unsettled: inout [(Int, Int)]) {
        let window = self.window, n = self.n
        let dayI = lastDay[i]
        guard window >= 2, dayI != .min, !group.isEmpty else {
            for j in columns { unsettled.append((i, j)) }
            return
        }
        lastDay.withUnsafeBufferPointer { lastDay in
        cutOf.withUnsafeBufferPointer { cutOf in
        group.withUnsafeBufferPointer { group in
        end.withUnsafeBufferPointer { end in
        zeroVariance.withUnsafeBufferPointer { zeroVariance in
        unit.withUnsafeBufferPointer { unit in
            let u = unit.baseAddress!
            // Pairs whose dot product is due, four at a time: the row's vector is read once
            // for four columns.
            var due: (Int, Int, Int, Int) = (0, 0, 0, 0)
            var dueCount = 0
            let rowEnd = end[c0(i)]
            func set(_ j: Int, _ r: Double, asOf: Int32) {
                cells[j] = PairCorrelation(value: max(-1, min(1, r)), observations: window, asOfDay: asOf)
            }
            for j in columns {
                let dayJ = lastDay[j]
                // The pair's cut: the earlier of the two last days.
                let c = dayI <= dayJ ? cutOf[i] : cutOf[j]
                guard dayJ != .min, c >= 0 else {
                    unsettled.append((i, j))
                    continue
                }
                let a = c * n + i, b = c * n + j
                guard group[a] >= 0, group[a] == group[b] else {
                    unsettled.append((i, j))
                    continue
                }
                guard !zeroVariance[a], !zeroVariance[b] else {
                    cells[j] = PairCorrelation(value: nil, observations: window, asOfDay: end[a])
                    continue
                }
                // The row's own cut (the common case: both symbols end on the same day) goes
                // four at a time; a pair cut earlier, alone.
                guard c == cutOf[i] else {
                    set(j, Self.dot(u + a * window, u + b * window, window), asOf: end[a])
                    continue
                }
                switch dueCount {
                case 0: due.0 = j
                case 1: due.1 = j
                case 2: due.2 = j
                default:
                    due.3 = j
                    let row = u + a * window, base = c * n
                    let r = Self.dot4(row, u + (base + due.0) * window, u + (base + due.1) * window,
                                      u + (base + due.2) * window, u + (base + due.3) * window, window)
                    set(due.0, r.0, asOf: rowEnd)
                    set(due.1, r.1, asOf: rowEnd)
                    set(due.2, r.2, asOf: rowEnd)
                    set(due.3, r.3, asOf: rowEnd)
                    dueCount = 0
                    continue
                }
                dueCount += 1
            }
            let row = u + c0(i) * window
            for j in [due.0, due.1, due.2].prefix(dueCount) {
                set(j, Self.dot(row, u + (cutOf[i] * n + j) * window, window), asOf: rowEnd)
            }
        }
        }
        }
        }
        }
        }
    }

    /// The index of symbol `i` in the arrays of its own cut (its last day), or 0 when that
    /// cut has no vectors (nothing is then due at it).
    private func c0(_ i: Int) -> Int { max(cutOf[i], 0) * n + i }

    /// Four dot products of `row` with `b0`…`b3`, each of `count` doubles: two lanes at a
    /// time, `row` loaded once for the four.
    @inline(__always)
    private static func dot4(_ row: UnsafePointer<Double>, _ b0: UnsafePointer<Double>, _ b1: UnsafePointer<Double>,
                             _ b2: UnsafePointer<Double>, _ b3: UnsafePointer<Double>,
                             _ count: Int) -> (Double, Double, Double, Double) {
        var s0 = SIMD2<Double>(), s1 = SIMD2<Double>(), s2 = SIMD2<Double>(), s3 = SIMD2<Double>()
        var t0 = SIMD2<Double>(), t1 = SIMD2<Double>(), t2 = SIMD2<Double>(), t3 = SIMD2<Double>()
        func load(_ p: UnsafePointer<Double>, _ k: Int) -> SIMD2<Double> {
            UnsafeRawPointer(p + k).loadUnaligned(as: SIMD2<Double>.self)
        }
        // Four lanes of `row` per turn, in two sets of sums (fewer turns, more in flight).
        var k = 0
        while k &+ 4 <= count {
            let x = load(row, k), y = load(row, k &+ 2)
            s0 += x * load(b0, k)
            t0 += y * load(b0, k &+ 2)
            s1 += x * load(b1, k)
            t1 += y * load(b1, k &+ 2)
            s2 += x * load(b2, k)
            t2 += y * load(b2, k &+ 2)
            s3 += x * load(b3, k)
            t3 += y * load(b3, k &+ 2)
            k &+= 4
        }
        s0 += t0
        s1 += t1
        s2 += t2
        s3 += t3
        while k &+ 2 <= count {
            let x = load(row, k)
            s0 += x * load(b0, k)
            s1 += x * load(b1, k)
            s2 += x * load(b2, k)
            s3 += x * load(b3, k)
            k &+= 2
        }
        var r = (s0.sum(), s1.sum(), s2.sum(), s3.sum())
        if k < count {
            let x = row[k]
            r.0 += x * b0[k]
            r.1 += x * b1[k]
            r.2 += x * b2[k]
            r.3 += x * b3[k]
        }
        return r
    }

    /// The dot product of two vectors of `count` doubles, with four sums, so the loop keeps
    /// several multiply-adds in flight (and vectorises).
    @inline(__always)
    private static func dot(_ a: UnsafePointer<Double>, _ b: UnsafePointer<Double>, _ count: Int) -> Double {
        var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
        var k = 0
        while k + 4 <= count {
            s0 += a[k] * b[k]
            s1 += a[k + 1] * b[k + 1]
            s2 += a[k + 2] * b[k + 2]
            s3 += a[k + 3] * b[k + 3]
            k += 4
        }
        while k < count {
            s0 += a[k] * b[k]
            k += 1
        }
        return (s0 + s1) + (s2 + s3)
    }
}
