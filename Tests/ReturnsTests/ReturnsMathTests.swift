import EventCatalog
import Foundation
import Returns
import Testing

/// The numpy reference of tests/fixtures/make_returns_fixture.py.
struct Fixture: Decodable {
    let prices: [PricePoint]
    let simple: [DatedValue]
    let log: [DatedValue]

    static func load() throws -> Fixture {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/returns.json")
        return try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
    }
}

func relativeError(_ a: Double, _ b: Double) -> Double {
    abs(a - b) / max(abs(b), 1e-300)
}

@Suite("Returns arithmetic")
struct ReturnsMathTests {
    @Test("daily simple and log returns match numpy to 1e-9 relative, gaps included")
    func matchesNumpy() throws {
        let fixture = try Fixture.load()
        let returns = ReturnsMath.dailyReturns(fixture.prices)
        #expect(returns.count == fixture.simple.count)
        for (r, expected) in zip(returns, fixture.simple) {
            #expect(r.date == expected.date)
            #expect(relativeError(r.simple, expected.value) <= 1e-9, "\(r.date)")
        }
        for (r, expected) in zip(returns, fixture.log) {
            #expect(relativeError(r.log, expected.value) <= 1e-9, "\(r.date)")
        }
    }

    @Test("a single price has no return; a constant price has zero returns")
    func edges() {
        let d1 = CalendarDate("2024-01-02")!, d2 = CalendarDate("2024-01-03")!
        #expect(ReturnsMath.dailyReturns([PricePoint(date: d1, close: 10)]).isEmpty)
        let flat = ReturnsMath.dailyReturns([PricePoint(date: d1, close: 10), PricePoint(date: d2, close: 10)])
        #expect(flat == [DailyReturn(date: d2, simple: 0, log: 0)])
    }

    @Test("hand-checked values: 100 → 110 → 99")
    func handChecked() {
        let p = ["2024-01-02": 100.0, "2024-01-03": 110.0, "2024-01-04": 99.0].map {
            PricePoint(date: CalendarDate($0.key)!, close: $0.value)
        }.sorted { $0.date < $1.date }
        let r = ReturnsMath.dailyReturns(p)
        #expect(abs(r[0].simple - 0.1) < 1e-15)
        #expect(abs(r[1].simple - (-0.1)) < 1e-15)
        #expect(abs(r[0].log - 0.09531017980432493) < 1e-15)
    }
}

@Suite("Returns summary")
struct SummaryTests {
    func points(_ closes: [Double]) -> [PricePoint] {
        closes.enumerated().map { PricePoint(date: CalendarDate(daysSinceEpoch: 19_000 + $0.offset), close: $0.element) }
    }

    @Test("against the numpy fixture: mean, sample volatility × √252, cumulative, drawdown")
    func matchesNumpy() throws {
        let fixture = try Fixture.load()
        let r = fixture.simple.map(\.value)
        let s = ReturnsMath.summary(symbol: "X", prices: fixture.prices, returns: r)
        // An independent computation in Decimal-free long form.
        let n = Double(r.count)
        let mean = r.reduce(0, +) / n
        let variance = r.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / (n - 1)
        #expect(s.count == r.count)
        #expect(relativeError(s.mean!, mean) < 1e-9)
        #expect(relativeError(s.volatility!, variance.squareRoot() * 252.0.squareRoot()) < 1e-9)
        let closes = fixture.prices.map(\.close)
        #expect(relativeError(try #require(s.cumulativeReturn), closes.last! / closes.first! - 1) < 1e-9)
        var peak = 0.0, worst = 0.0
        for c in closes { peak = max(peak, c); worst = min(worst, c / peak - 1) }
        #expect(s.maxDrawdown == worst)
        #expect(s.firstDate == fixture.prices.first!.date && s.lastDate == fixture.prices.last!.date)
    }

    @Test("a single price: no returns, null mean and volatility, zero cumulative and drawdown")
    func single() throws {
        let s = ReturnsMath.summary(symbol: "X", prices: points([10]), returns: [])
        #expect(s.count == 0 && s.mean == nil && s.volatility == nil && s.cumulativeReturn == 0 && s.maxDrawdown == 0)
        let json = String(decoding: try JSONEncoder().encode(s), as: UTF8.self)
        #expect(json.contains("\"mean\":null") && json.contains("\"volatility\":null"))
    }

    @Test("constant prices: zero volatility; a fall then recovery: the drawdown from the peak")
    func constantsAndDrawdown() {
        let flat = ReturnsMath.summary(symbol: "X", prices: points([5, 5, 5]), returns: [0, 0])
        #expect(flat.volatility == 0 && flat.mean == 0 && flat.maxDrawdown == 0)
        let p = points([100, 120, 90, 130, 117])
        let r = ReturnsMath.dailyReturns(p).map(\.simple)
        let s = ReturnsMath.summary(symbol: "X", prices: p, returns: r)
        #expect(abs(s.maxDrawdown - (90.0 / 120.0 - 1)) < 1e-15)
        #expect(abs(s.cumulativeReturn! - 0.17) < 1e-12)
    }

    @Test("finite returns whose sum, square or product overflow give null statistics, never a non-finite number")
    func overflowIsNull() throws {
        // Each return is finite (1e200 / 1e-100 = 1e300), but its square is not, nor the product of two.
        let p = points([1e-100, 1e200, 1e-100, 1e200])
        let r = ReturnsMath.dailyReturns(p).map(\.simple)
        #expect(r.allSatisfy { $0.isFinite })
        let s = ReturnsMath.summary(symbol: "X", prices: p, returns: r)
        #expect(s.volatility == nil && s.mean != nil)
        let json = try JSONSerialization.jsonObject(with: try JSONEncoder().encode(s)) as! [String: Any]
        #expect(json["volatility"] is NSNull)
        #expect(json.keys.contains("cumulative_return"))
    }
}
