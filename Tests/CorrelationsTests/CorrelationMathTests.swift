@testable import Correlations
import EventCatalog
import Foundation
import HTTPServer
import Testing

struct CorrelationFixture: Decodable {
    struct Series: Decodable {
        let days: [Int32]
        let values: [Double]
    }
    struct Expected: Decodable {
        let a: String
        let b: String
        let window: Int
        let value: Double?
        let observations: Int
        let as_of: Int32?
    }
    let series: [String: Series]
    let expected: [Expected]

    static func load() throws -> CorrelationFixture {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/correlations.json")
        return try JSONDecoder().decode(CorrelationFixture.self, from: Data(contentsOf: url))
    }
}

@Suite("Correlation arithmetic")
struct CorrelationMathTests {
    @Test("pairs over the latest N common dates match numpy's corrcoef to 1e-9, gaps and nulls included")
    func matchesNumpy() throws {
        let fixture = try CorrelationFixture.load()
        var nulls = 0
        for e in fixture.expected {
            let a = fixture.series[e.a]!, b = fixture.series[e.b]!
            let got = CorrelationMath.pair(ReturnSeries(days: a.days, values: a.values),
                                           ReturnSeries(days: b.days, values: b.values), window: e.window)
            #expect(got.observations == e.observations, "\(e.a)/\(e.b)/\(e.window)")
            #expect(got.asOfDay == e.as_of, "\(e.a)/\(e.b)/\(e.window)")
            if let expected = e.value {
                let value = try #require(got.value, "\(e.a)/\(e.b)/\(e.window)")
                #expect(abs(value - expected) <= 1e-9 * max(abs(expected), 1e-12), "\(e.a)/\(e.b)/\(e.window)")
            } else {
                nulls += 1
                #expect(got.value == nil, "\(e.a)/\(e.b)/\(e.window)")
            }
        }
        #expect(nulls >= 4, "the fixture exercises zero variance and short histories")
    }

    @Test("perfectly (anti-)correlated series give ±1; the diagonal needs N returns and a variance")
    func exact() {
        let days: [Int32] = [1, 2, 3, 4, 5]
        let x = ReturnSeries(days: days, values: [0.01, -0.02, 0.03, 0.0, 0.015])
        let y = ReturnSeries(days: days, values: x.values.map { 2 * $0 + 0.001 })
        let z = ReturnSeries(days: days, values: x.values.map { -$0 })
        #expect(abs(CorrelationMath.pair(x, y, window: 5).value! - 1) < 1e-12)
        #expect(abs(CorrelationMath.pair(x, z, window: 5).value! + 1) < 1e-12)
        #expect(CorrelationMath.pair(x, y, window: 6).value == nil)
        #expect(CorrelationMath.pair(x, y, window: 6).observations == 5)
        #expect(CorrelationMath.diagonal(x, window: 5).value == 1)
        #expect(CorrelationMath.diagonal(x, window: 6).value == nil)
        #expect(CorrelationMath.diagonal(ReturnSeries(days: days, values: [0, 0, 0, 0, 0]), window: 5).value == nil)
    }

    @Test("day numbers and dates convert both ways")
    func days() {
        for text in ["1970-01-01", "2024-02-29", "1999-12-31", "2100-03-01"] {
            let date = CalendarDate(text)!
            #expect(CalendarDate(daysSinceEpoch: date.daysSinceEpoch) == date)
        }
    }
}

@Suite("POST /windows validation")
struct AddWindowParsingTests {
    @Test("JSON faults are 400, out of range 422", arguments: [
        ("{\"window\": 60}", 0, ""), ("{\"window\": 6e1}", 0, ""),
        ("{\"window\": 60.5}", 400, "invalid_body"), ("{\"window\": \"60\"}", 400, "invalid_body"),
        ("{}", 400, "invalid_body"), ("[60]", 400, "invalid_body"), ("nope", 400, "invalid_body"),
        ("{\"window\": 1}", 422, "invalid_window"), ("{\"window\": 2521}", 422, "invalid_window"),
        ("{\"window\": -5}", 422, "invalid_window"), ("{\"window\": 1e999}", 400, "invalid_body"),
    ])
    func parse(body: String, status: Int, code: String) {
        do {
            let command = try AddWindowBody.parse(Array(body.utf8))
            #expect(status == 0 && command.window == 60)
        } catch {
            #expect(error.status == status && error.code == code, "\(body)")
        }
    }
}

extension WindowPairs {
    /// The pair `(i, j)` when the unit vectors settle it (``fill(row:columns:into:unsettled:)``
    /// for one cell); `nil`: it is left to `CorrelationMath`.
    func aligned(_ i: Int, _ j: Int) -> PairCorrelation? {
        var row = CorrelationRow(count: j + 1)
        var left: [(Int, Int)] = []
        row.withUnsafeCells { cells in fill(row: i, columns: CollectionOfOne(j), into: cells, unsettled: &left) }
        return left.isEmpty ? row[j] : nil
    }
}

@Suite("Pairs of a batch through unit vectors (WindowPairs)")
struct WindowPairsTests {
    /// The same observations and as-of day, and values within 1e-12 (or both `null`).
    static func expectSame(_ got: PairCorrelation, _ expected: PairCorrelation, _ label: String) {
        #expect(got.observations == expected.observations && got.asOfDay == expected.asOfDay, "\(label)")
        switch (got.value, expected.value) {
        case (nil, nil): break
        case let (a?, b?): #expect(abs(a - b) <= 1e-12, "\(label): \(a) vs \(b)")
        default: Issue.record("\(label): \(String(describing: got.value)) vs \(String(describing: expected.value))")
        }
    }

    @Test("a pair it settles equals CorrelationMath.pair to 1e-12 (value, observations, as-of day): shared calendars, symbols a day ahead, gaps, a constant series, ±1; the others it leaves to CorrelationMath")
    func matchesPairwise() {
        var random = SystemRandomNumberGenerator()
        var settled = 0
        for _ in 0..<200 {
            let window = Int.random(in: 2...40, using: &random)
            let days = Int.random(in: 1...80, using: &random)
            let n = Int.random(in: 1...12, using: &random)
            var series = (0..<n).map { _ -> ReturnSeries in
                // Most symbols on one calendar; some a day or two ahead or behind, some with gaps.
                let end = days - [0, 0, 0, 1, 2][Int.random(in: 0..<5, using: &random)]
                let gappy = Int.random(in: 0..<5, using: &random) == 0
                var s = ReturnSeries()
                for d in 0..<max(0, end) where !gappy || Int.random(in: 0..<4, using: &random) > 0 {
                    s.days.append(Int32(10_000 + d))
                    s.values.append(Double.random(in: -0.05...0.05, using: &random))
                }
                return s
            }
            if n > 2 { series[1].values = series[1].values.map { _ in 0.25 } }
            if n > 3 { series[3] = ReturnSeries(days: series[0].days, values: series[0].values.map { -3 * $0 + 1 }) }
            let pairs = WindowPairs(window: window, series: series)
            for i in 0..<n {
                for j in 0..<n where i != j {
                    let expected = CorrelationMath.pair(series[i], series[j], window: window)
                    guard let got = pairs.aligned(i, j) else { continue }
                    settled += 1
                    Self.expectSame(got, expected, "window \(window) [\(i),\(j)]")
                }
            }
            if n > 3, let anti = pairs.aligned(0, 3)?.value { #expect(abs(anti + 1) < 1e-12) }
        }
        #expect(settled > 1_000, "only \(settled) pairs went through the unit vectors")
    }

    @Test("a whole row filled at once (four pairs per pass of the row's vector) equals CorrelationMath.pair cell by cell; the cells it leaves are listed and untouched")
    func wholeRows() {
        var random = SystemRandomNumberGenerator()
        var settled = 0
        for _ in 0..<60 {
            let window = Int.random(in: 2...30, using: &random)
            let n = Int.random(in: 5...40, using: &random)
            let days = window + Int.random(in: 0...10, using: &random)
            let series = (0..<n).map { _ -> ReturnSeries in
                let end = days - [0, 0, 0, 0, 1][Int.random(in: 0..<5, using: &random)]
                let gappy = Int.random(in: 0..<8, using: &random) == 0
                var s = ReturnSeries()
                for d in 0..<end where !gappy || Int.random(in: 0..<4, using: &random) > 0 {
                    s.days.append(Int32(20_000 + d))
                    s.values.append(Double.random(in: -0.05...0.05, using: &random))
                }
                return s
            }
            let pairs = WindowPairs(window: window, series: series)
            for i in 0..<n {
                var row = CorrelationRow(count: i + 1)
                var left: [(Int, Int)] = []
                row.withUnsafeCells { cells in pairs.fill(row: i, columns: 0..<i, into: cells, unsettled: &left) }
                let unsettled = Set(left.map(\.1))
                #expect(left.allSatisfy { $0.0 == i })
                for j in 0..<i {
                    if unsettled.contains(j) {
                        #expect(row[j] == PairCorrelation(value: nil, observations: 0, asOfDay: nil))
                        continue
                    }
                    settled += 1
                    let expected = CorrelationMath.pair(series[i], series[j], window: window)
                    Self.expectSame(row[j], expected, "window \(window) [\(i),\(j)]")
                }
            }
        }
        #expect(settled > 5_000, "only \(settled) pairs went through the unit vectors")
    }
}

@Suite("Rows of the stored view (CorrelationRow)")
struct CorrelationRowTests {
    static func cell(_ value: Double?, _ observations: Int, _ day: Int32?) -> PairCorrelation {
        PairCorrelation(value: value, observations: observations, asOfDay: day)
    }

    @Test("a row whose cells share observations and as-of day is stored compact (8 bytes a cell and the shared 8), reads back the same, and goes back to 16-byte cells when a cell differs")
    func compact() {
        var row = CorrelationRow(count: 4)
        for (j, v) in [0.5, nil, -1, 1].enumerated() { row[j] = Self.cell(v, 60, 20_100) }
        let stored = row.encoded()
        #expect(stored.cells.count == 4 * 8 && stored.shared?.count == 8)
        var back = CorrelationRow(cells: stored.cells, shared: stored.shared)
        #expect(back.count == 4)
        for j in 0..<4 { #expect(back[j] == row[j]) }
        #expect(back[1].value == nil && back[2].value == -1 && back[0].asOfDay == 20_100)
        // A cell past the end reads as never computed.
        #expect(back[7] == Self.cell(nil, 0, nil))
        back[2] = Self.cell(0.25, 59, nil)
        let mixed = back.encoded()
        #expect(mixed.cells.count == 4 * 16 && mixed.shared == nil)
        // Filled in place, a compact row goes back to 16-byte cells first; what is set reads back.
        var filled = CorrelationRow(cells: stored.cells, shared: stored.shared)
        filled.withUnsafeCells { cells in
            #expect(cells.count == 4 && cells[0] == Self.cell(0.5, 60, 20_100))
            cells[3] = Self.cell(-0.75, 12, 99)
            #expect(cells[3] == Self.cell(-0.75, 12, 99) && cells[2] == Self.cell(-1, 60, 20_100))
        }
        #expect(filled.encoded().shared == nil && filled[3] == Self.cell(-0.75, 12, 99))
        let again = CorrelationRow(cells: mixed.cells, shared: nil)
        #expect(again[2] == Self.cell(0.25, 59, nil) && again[3] == Self.cell(1, 60, 20_100) && again[1] == Self.cell(nil, 60, 20_100))
    }

    @Test("a row of one cell, and a row of cells that differ, keep 16-byte cells; a row on record without `shared` (before compact rows) reads as before")
    func full() {
        var one = CorrelationRow(count: 1)
        one[0] = Self.cell(1, 20, 100)
        #expect(one.encoded().shared == nil && one.encoded().cells.count == 16)
        var row = CorrelationRow(count: 3)
        row[0] = Self.cell(0.1, 20, 100)
        row[1] = Self.cell(0.2, 20, 101)
        let stored = row.encoded()
        #expect(stored.shared == nil && stored.cells == row.bytes)
        let back = CorrelationRow(cells: stored.cells, shared: nil)
        #expect(back[0] == row[0] && back[1] == row[1] && back[2] == Self.cell(nil, 0, nil))
    }
}

@Suite("Pairs from the latest returns only")
struct TailPairTests {
    /// A random calendar: each of `days` days present with probability `density`.
    static func series(days: Int, density: Double, seed: inout SystemRandomNumberGenerator) -> ReturnSeries {
        var s = ReturnSeries()
        for d in 0..<days where Double.random(in: 0..<1, using: &seed) < density {
            s.days.append(Int32(d))
            s.values.append(Double.random(in: -0.05...0.05, using: &seed))
        }
        return s
    }

    static func tail(_ s: ReturnSeries, _ n: Int) -> ReturnSeries {
        ReturnSeries(days: Array(s.days.suffix(n)), values: Array(s.values.suffix(n)))
    }

    @Test("on cut series the answer is the whole series' answer, or nil (compute again) exactly when a cut one ran out")
    func tails() {
        var random = SystemRandomNumberGenerator()
        var settled = 0, unsettled = 0
        for _ in 0..<3_000 {
            let a = Self.series(days: 400, density: Double.random(in: 0.05...1, using: &random), seed: &random)
            let b = Self.series(days: 400, density: Double.random(in: 0.05...1, using: &random), seed: &random)
            let window = Int.random(in: 2...60, using: &random)
            let na = Int.random(in: 0...a.count + 3, using: &random), nb = Int.random(in: 0...b.count + 3, using: &random)
            let (ta, tb) = (Self.tail(a, na), Self.tail(b, nb))
            let whole = CorrelationMath.pair(a, b, window: window)
            if let got = CorrelationMath.pair(ta, complete: na >= a.count, tb, complete: nb >= b.count, window: window) {
                settled += 1
                #expect(got == whole, "window \(window), cut to \(na)/\(a.count) and \(nb)/\(b.count)")
            } else {
                unsettled += 1
                #expect(na < a.count || nb < b.count, "nil although nothing was cut")
                // Cut less? The whole series settle it, always.
                #expect(CorrelationMath.pair(a, complete: true, b, complete: true, window: window) == whole)
            }
        }
        #expect(settled > 500 && unsettled > 500, "both outcomes exercised: \(settled) / \(unsettled)")
    }
}
