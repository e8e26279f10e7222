import Foundation
import HTTPServer

/// A named readiness check (broker connected, store open).
public struct ReadinessCheck: Sendable {
    public let name: String
    public let check: @Sendable () async -> Bool

    public init(_ name: String, _ check: @escaping @Sendable () async -> Bool) {
        self.name = name
        self.check = check
    }
}

/// `GET /healthz` (the process answers) and `GET /readyz` (every check passes: 200, else 503).
public enum HealthRoutes {
    public static func add(to router: inout Router, process: String, checks: [ReadinessCheck]) {
        router.get("/healthz") { _ in
            try .json(["status": "ok", "service": process])
        }
        router.get("/readyz") { _ in
            var results: [String: String] = [:]
            var ready = true
            for check in checks {
                let ok = await check.check()
                results[check.name] = ok ? "ok" : "down"
                ready = ready && ok
            }
            return try .json(ReadyBody(status: ready ? "ready" : "not_ready", service: process, checks: results),
                             status: ready ? 200 : 503)
        }
    }

    struct ReadyBody: Encodable {
        let status: String
        let service: String
        let checks: [String: String]
    }
}
