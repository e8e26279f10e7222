import Foundation
import HTTPServer
import Metrics
import Prometheus

/// Prometheus metrics of the process: swift-metrics, bootstrapped once in `main` with the
/// swift-prometheus backend, exposed at `GET /metrics` in the text format.
public enum MetricsSetup {
    /// The registry every metric of this process goes to.
    public static let registry = PrometheusCollectorRegistry()

    /// Bootstraps swift-metrics (call once, from `main`).
    public static func bootstrap() {
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    }

    /// Memory gauges, set on each scrape: the process's resident size now and at its peak
    /// (`VmRSS`, `VmHWM`), and SQLite's own allocations now and at their peak.
    private static let memory = (
        resident: Gauge(label: "process_resident_memory_bytes"),
        residentPeak: Gauge(label: "process_resident_memory_max_bytes"),
        sqlite: Gauge(label: "sqlite_memory_used_bytes"),
        sqlitePeak: Gauge(label: "sqlite_memory_highwater_bytes")
    )

    static func recordMemory() {
        if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) {
            for line in status.split(separator: "\n") {
                let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                guard fields.count >= 2, let kilobytes = Int(fields[1]) else { continue }
                if fields[0] == "VmRSS:" { memory.resident.record(kilobytes * 1024) }
                if fields[0] == "VmHWM:" { memory.residentPeak.record(kilobytes * 1024) }
            }
        }
        let sqlite = SQLiteMemory.usage
        memory.sqlite.record(sqlite.used)
        memory.sqlitePeak.record(sqlite.highwater)
    }

    /// `GET /metrics`.
    public static func addRoute(to router: inout Router) {
        router.get("/metrics") { _ in
            recordMemory()
            return HTTPResponse(status: 200, headers: ["Content-Type": "text/plain; version=0.0.4; charset=utf-8"],
                         body: registry.emitToBuffer())
        }
    }
}
