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
