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

    /// `GET /metrics`.
    public static func addRoute(to router: inout Router) {
        router.get("/metrics") { _ in
            HTTPResponse(status: 200, headers: ["Content-Type": "text/plain; version=0.0.4; charset=utf-8"],
                         body: registry.emitToBuffer())
        }
    }
}
