@testable import HTTPServer
import Testing

@Suite("Request metrics")
struct RequestMetricsTests {
    @Test("made-up methods share one label, so they cannot grow /metrics")
    func unknownMethods() {
        let metrics = RequestMetrics()
        for i in 0..<5_000 { _ = metrics.handles(route: "unmatched", method: "X\(i)", status: 404) }
        for method in ["GET", "POST", "get"] { _ = metrics.handles(route: "unmatched", method: method, status: 404) }
        // GET, POST and one OTHER (lowercase `get` is not GET: HTTP methods are case-sensitive).
        #expect(metrics.labelCount == 3)
    }
}
