import Correlations
import EventCatalog
import Foundation
import Logging
import MessageBus
import ServiceRuntime
import Testing

@Suite("Correlations store: pairs beyond the returns kept in memory")
struct SeriesCacheTests {
    @Test("a pair whose latest 20 common dates go back past what the worker keeps is computed from the whole series")
    func sparsePair() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tail-\(UUID().uuidString).sqlite").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = CorrelationsStore(database: try ServiceDatabase(path: path, migrations: CorrelationsStore.migrate))
        func event(_ symbol: String, _ days: [Int], _ value: (Int) -> Double) -> ReturnsCalculated {
            ReturnsCalculated(symbol: symbol, returns: days.map {
                DatedValue(date: CalendarDate(daysSinceEpoch: 10_000 + $0), value: value($0))
            })
        }
        let handlers = CorrelationsHandlers(store: store, logger: .init(label: "test"))
        func apply(_ e: ReturnsCalculated) async throws {
            try await handlers.returnsCalculated(e, context: HandlerContext(metadata: .newOperation(), appId: "correlations",
                                                             handledEventId: UUID()))
        }
        // A: a return every day for 1,000 days; B: one every 40th day. The worker keeps
        // 252 + 64 = 316 returns of A: only 7 of the latest 20 common dates.
        let a = event("A", Array(0..<1_000)) { sin(Double($0) * 0.7) / 100 }
        let b = event("B", Array(stride(from: 0, to: 1_000, by: 40))) { cos(Double($0) * 0.3) / 100 + Double($0 % 7) / 1_000 }
        try await apply(a)
        try await apply(b)
        func whole(_ e: ReturnsCalculated) -> ReturnSeries {
            ReturnSeries(days: e.returns.map { Int32($0.date.daysSinceEpoch) }, values: e.returns.map(\.value))
        }
        let expected = CorrelationMath.pair(whole(a), whole(b), window: 20)
        #expect(expected.observations == 20 && expected.value != nil)
        var got = try await store.pair("A", "B", window: 20)
        #expect(got == expected)
        #expect(try await store.pair("A", "B", window: 60)?.observations == 25)
        // A changes again (A's side now the symbol of the event): the same pair, the same answer.
        let more = event("A", [1_000]) { _ in 0.002 }
        try await apply(more)
        got = try await store.pair("A", "B", window: 20)
        #expect(got == expected)
        // The dense matrix read agrees.
        let matrix = try await store.matrix(of: ["B", "A"], window: 20)
        #expect(matrix.values[1] == expected.value && matrix.values[2] == expected.value)
        // Its diagonal: each symbol's own latest 20 returns; the as-of day the latest of every cell.
        let aMore = ReturnSeries(days: whole(a).days + [11_000], values: whole(a).values + [0.002])
        #expect(matrix.values[0] == CorrelationMath.diagonal(whole(b), window: 20).value && matrix.values[0] == 1)
        #expect(matrix.values[3] == CorrelationMath.diagonal(aMore, window: 20).value && matrix.values[3] == 1)
        #expect(matrix.asOfDay == 11_000)
    }
}
