import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import HTTPServer

/// The services' URLs, from `STEGA_*_URL` with localhost defaults.
struct Endpoints {
    let returns: URL
    let correlations: URL
    let boundary: URL

    init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        func url(_ name: String, _ fallback: String) -> URL {
            URL(string: environment[name].flatMap { $0.isEmpty ? nil : $0 } ?? fallback)!
        }
        returns = url("STEGA_RETURNS_URL", "http://127.0.0.1:8081")
        correlations = url("STEGA_CORRELATIONS_URL", "http://127.0.0.1:8082")
        boundary = url("STEGA_BOUNDARY_URL", "http://127.0.0.1:8080")
    }

    /// The boundary's WebSocket.
    var webSocket: URL {
        var components = URLComponents(url: boundary, resolvingAgainstBaseURL: false)!
        components.scheme = components.scheme == "https" ? "wss" : "ws"
        components.path = "/ws"
        return components.url!
    }
}

/// A failure to show as one line.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// JSON over HTTP to the services; a service's error body becomes one clear line.
enum HTTP {
    static func get(_ base: URL, _ path: String, query: [String: String] = [:]) async throws -> Any {
        var components = URLComponents(url: base.appendingPathComponent(path), resolvingAgainstBaseURL: false)!
        if !query.isEmpty { components.queryItems = query.sorted { $0.key < $1.key }.map { URLQueryItem(name: $0.key, value: $0.value) } }
        return try await send(URLRequest(url: components.url!))
    }

    static func post(_ base: URL, _ path: String, json: Any) async throws -> Any {
        var request = URLRequest(url: base.appendingPathComponent(path))
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        if let token = ProcessInfo.processInfo.environment["STEGA_API_TOKEN"], !token.isEmpty {
            request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        }
        request.httpBody = try JSONSerialization.data(withJSONObject: json)
        return try await send(request)
    }

    private static func send(_ request: URLRequest) async throws -> Any {
        let (data, response): (Data, URLResponse)
        do {
            (data, response) = try await URLSession.shared.data(for: request)
        } catch {
            throw CLIError("cannot reach \(request.url?.host ?? "?"):\(request.url?.port ?? 0) (\(request.url?.path ?? "")): is the service running?")
        }
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        let body = try? JSONSerialization.jsonObject(with: data)
        guard (200..<300).contains(status) else {
            if let error = (body as? [String: Any])?["error"] as? [String: Any] {
                throw CLIError("\(status) \(error["code"] as? String ?? "error"): \(error["message"] as? String ?? "")")
            }
            throw CLIError("\(status) from \(request.url?.absoluteString ?? "")")
        }
        guard let body else { throw CLIError("the service answered something that is not JSON") }
        return body
    }
}

/// Follows operations and events over the boundary's WebSocket.
struct Follower {
    let endpoints: Endpoints

    /// Waits for `operation`'s outcome, calling `progress` for each event; returns the status.
    func wait(for operation: String, timeout: Double, progress: (String, [String: Any]) -> Void) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        do {
            let client = try WebSocketClient(url: endpoints.webSocket, timeout: max(timeout, 0.001))
            defer { client.close() }
            try client.send(#"{"action":"subscribe","operation":"\#(operation)"}"#)
            while true {
                let remaining = deadline.timeIntervalSinceNow
                guard remaining > 0 else { break }
                client.setReceiveTimeout(remaining)
                let text: String
                switch try client.next() {
                case .text(let received): text = received
                case .closed: throw CLIError("the boundary closed the connection")
                case .timedOut: continue
                }
                guard let message = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { continue }
                switch message["type"] as? String {
                case "event": progress(message["routing_key"] as? String ?? "", message)
                case "operation": return message["status"] as? String ?? "unknown"
                case "error": throw CLIError(message["message"] as? String ?? "error")
                default: continue
                }
            }
        } catch let error as HTTPServerError {
            throw CLIError("the boundary at \(endpoints.boundary.absoluteString): \(error)")
        }
        throw CLIError("no outcome for \(operation) after \(Int(timeout)) s")
    }

    /// Calls `handle` with every event matching `pattern` until the connection ends.
    func watch(_ pattern: String, handle: ([String: Any]) -> Void) throws {
        let client = try WebSocketClient(url: endpoints.webSocket, timeout: 3600)
        let request = try JSONSerialization.data(withJSONObject: ["action": "subscribe", "pattern": pattern])
        try client.send(String(decoding: request, as: UTF8.self))
        while true {
            let text: String
            switch try client.next() {
            case .text(let received): text = received
            case .closed: return
            case .timedOut: continue  // a quiet hour: still watching
            }
            guard let message = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { continue }
            if message["type"] as? String == "event" { handle(message) }
            if message["type"] as? String == "error" { throw CLIError(message["message"] as? String ?? "error") }
        }
    }
}
