import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import HTTPServer
import Synchronization
import Testing

/// A few tests through the real libmicrohttpd daemon on a loopback port.
@Suite("HTTP daemon over a real socket", .serialized)
struct DaemonTests {
    func withDaemon(maxBody: Int = 1024, _ body: (Int) async throws -> Void) async throws {
        let daemon = HTTPDaemon(router: makeRouter(), host: "127.0.0.1", port: 0, threads: 1, maxBodySize: maxBody)
        let port = try daemon.start()
        #expect(port > 0)
        defer { daemon.stop(drainFor: 1) }
        try await body(port)
    }

    func send(_ port: Int, _ method: String, _ path: String, body: Data? = nil,
              contentType: String? = nil) async throws -> (Int, [String: Any]?, HTTPURLResponse) {
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)\(path)")!)
        request.httpMethod = method
        request.httpBody = body
        if let contentType { request.setValue(contentType, forHTTPHeaderField: "Content-Type") }
        let (data, response) = try await URLSession.shared.data(for: request)
        let http = response as! HTTPURLResponse
        return (http.statusCode, try? JSONSerialization.jsonObject(with: data) as? [String: Any], http)
    }

    @Test("GET with a path parameter and POST with a JSON body")
    func getAndPost() async throws {
        try await withDaemon { port in
            let (status, body, _) = try await send(port, "GET", "/items/42")
            #expect(status == 200)
            #expect(body?["id"] as? String == "42")
            let (posted, _, _) = try await send(port, "POST", "/items", body: Data("{\"a\":1}".utf8),
                                                contentType: "application/json")
            #expect(posted == 202)
        }
    }

    @Test("bodies below, at and past the size read a chunk at a time (64 KiB) arrive whole, with their Content-Length, on one keep-alive connection")
    func largeBodies() async throws {
        try await withDaemon { port in
            for n in [0, 1, 65_535, 65_536, 65_537, 3 * 65_536 + 7, 1_000_003] {
                let (data, response) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)/bytes/\(n)")!)
                let http = response as! HTTPURLResponse
                #expect(http.statusCode == 200)
                #expect(http.value(forHTTPHeaderField: "Content-Length") == "\(n)")
                #expect(data.count == n && Array(data) == patternBytes(n), "body of \(n) bytes")
            }
        }
    }

    @Test("a body made as it is sent arrives whole, chunked (no Content-Length), an empty piece and all")
    func generatedBodies() async throws {
        try await withDaemon { port in
            for n in [0, 999, 2_500, 300_007] {
                let (data, response) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)/pieces/\(n)")!)
                let http = response as! HTTPURLResponse
                #expect(http.statusCode == 200 && http.value(forHTTPHeaderField: "Content-Type") == "application/json")
                #expect(http.value(forHTTPHeaderField: "Content-Length") == nil)
                #expect(data.count == n && Array(data) == patternBytes(n), "body of \(n) bytes")
            }
        }
    }

    @Test("a body over the limit is 413 with a JSON error")
    func tooLarge() async throws {
        try await withDaemon(maxBody: 1024) { port in
            let big = Data(repeating: UInt8(ascii: "a"), count: 4096)
            let (status, body, _) = try await send(port, "POST", "/items", body: big, contentType: "application/json")
            #expect(status == 413)
            #expect((body?["error"] as? [String: Any])?["code"] as? String == "payload_too_large")
        }
    }

    @Test("a slow handler does not hold up other requests on the same MHD thread")
    func slowHandlerDoesNotBlock() async throws {
        // No timing: the slow handler waits until the quick request has been answered (or gives
        // up after 20 s). If the quick request were queued behind it, it would be answered only
        // after the give-up, and the slow one would report that it was never released.
        let released = Mutex(false)
        var router = makeRouter()
        router.get("/held") { _ in
            let deadline = ContinuousClock.now + .seconds(20)
            while !released.withLock({ $0 }) && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            return try .json(["released": released.withLock { $0 } ? "yes" : "no"])
        }
        let daemon = HTTPDaemon(router: router, host: "127.0.0.1", port: 0, threads: 1, maxBodySize: 1024)
        let port = try daemon.start()
        defer { daemon.stop(drainFor: 1) }
        async let held = send(port, "GET", "/held")
        let arrived = ContinuousClock.now + .seconds(10)
        while daemon.activeRequests == 0 && ContinuousClock.now < arrived {
            try await Task.sleep(for: .milliseconds(5))
        }
        let (status, _, _) = try await send(port, "GET", "/items/1")
        #expect(status == 200)
        released.withLock { $0 = true }
        let (heldStatus, heldBody, _) = try await held
        #expect(heldStatus == 200)
        #expect(heldBody?["released"] as? String == "yes", "the quick request waited for the held one")
    }

    @Test("a stop answers requests still running with 503 after the drain time, and does not crash")
    func stopCutsShort() async throws {
        var router = Router()
        router.get("/slow") { _ in
            try? await Task.sleep(for: .seconds(3))
            return try .json(["slow": "done"])
        }
        router.get("/fast") { _ in try .json(["fast": "yes"]) }
        let daemon = HTTPDaemon(router: router, host: "127.0.0.1", port: 0, threads: 2)
        let port = try daemon.start()
        async let slow = send(port, "GET", "/slow")
        let deadline = ContinuousClock.now + .seconds(2)
        while daemon.activeRequests == 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(daemon.activeRequests == 1)
        daemon.stop(drainFor: 0.3)
        let (status, body, _) = try await slow
        #expect(status == 503)
        #expect((body?["error"] as? [String: Any])?["code"] as? String == "shutting_down")
        // Stopped: the port no longer takes connections.
        do {
            _ = try await send(port, "GET", "/fast")
            Issue.record("a stopped daemon answered")
        } catch let error as URLError {
            #expect(error.code == .cannotConnectToHost, "\(error)")
        }
    }

    @Test("a streamed response is sent as it is written, and a stop ends an open stream cleanly")
    func streams() async throws {
        let stream = ResponseStream()
        var router = Router()
        router.get("/stream") { _ in
            stream.write("event: a\ndata: 1\n\n")
            return HTTPResponse(status: 200, headers: ["Content-Type": "text/event-stream"], stream: stream)
        }
        router.get("/done") { _ in
            let finished = ResponseStream()
            finished.write("all")
            finished.finish()
            return HTTPResponse(status: 200, stream: finished)
        }
        let daemon = HTTPDaemon(router: router, host: "127.0.0.1", port: 0, threads: 1)
        let port = try daemon.start()
        let closed = Counter()
        stream.onClose { closed.increment() }
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/done")!)
        let (data, _) = try await URLSession.shared.data(for: request)
        #expect(String(decoding: data, as: UTF8.self) == "all")
        request.url = URL(string: "http://127.0.0.1:\(port)/stream")!
        async let open = URLSession.shared.data(for: request)
        try await Task.sleep(for: .milliseconds(200))
        stream.write("event: b\ndata: 2\n\n")  // resumes the suspended connection
        try await Task.sleep(for: .milliseconds(200))
        daemon.stop(drainFor: 2)
        let (body, response) = try await open
        #expect((response as! HTTPURLResponse).statusCode == 200)
        #expect(String(decoding: body, as: UTF8.self) == "event: a\ndata: 1\n\nevent: b\ndata: 2\n\n")
        #expect(closed.value == 1)
    }

    @Test("bad JSON is 400 and an unknown route 404, over the wire")
    func errors() async throws {
        try await withDaemon { port in
            let (missing, body, _) = try await send(port, "GET", "/nope")
            #expect(missing == 404)
            #expect((body?["error"] as? [String: Any])?["code"] as? String == "not_found")
            let (unsupported, _, _) = try await send(port, "POST", "/items", body: Data("{}".utf8), contentType: "text/plain")
            #expect(unsupported == 415)
        }
    }
}

extension DaemonTests {
    /// Sends `request` on `socket` and reads one response (headers and a Content-Length body).
    func exchange(_ socket: Int32, _ request: String) throws -> String {
        let bytes = Array(request.utf8)
        #expect(bytes.withUnsafeBytes { write(socket, $0.baseAddress, $0.count) } == bytes.count)
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let text = String(decoding: received, as: UTF8.self)
            if let end = text.range(of: "\r\n\r\n") {
                let head = text[..<end.lowerBound].lowercased()
                let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                    .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
                if received.count >= text.utf8.distance(from: text.utf8.startIndex, to: end.upperBound) + length {
                    return text
                }
            }
            let n = read(socket, &buffer, buffer.count)
            if n <= 0 { throw HTTPServerError("connection closed after \(received.count) bytes") }
            received.append(contentsOf: buffer[0..<n])
        }
    }

    @Test("keep-alive holds whether a handler answers before its first suspension (at once) or after it (suspended connection)")
    func keepAlive() async throws {
        var router = makeRouter()
        router.get("/later") { _ in
            try await Task.sleep(for: .milliseconds(20))
            return try .json(["later": "yes"])
        }
        let daemon = HTTPDaemon(router: router, host: "127.0.0.1", port: 0, threads: 1)
        let port = try daemon.start()
        defer { daemon.stop(drainFor: 1) }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(connected == 0)
        let host = "Host: 127.0.0.1\r\n"
        let body = "{\"a\":1}"
        let requests = [
            "GET /items/7 HTTP/1.1\r\n\(host)\r\n",
            "POST /items HTTP/1.1\r\n\(host)Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)",
            "GET /later HTTP/1.1\r\n\(host)\r\n",
            "GET /teapot HTTP/1.1\r\n\(host)\r\n",
            "GET /items/8 HTTP/1.1\r\n\(host)\r\n",
        ]
        var statuses: [String] = []
        for request in requests {
            let response = try exchange(fd, request)
            statuses.append(String(response.prefix(12)))
            #expect(!response.lowercased().contains("connection: close"), "\(response)")
        }
        #expect(statuses == ["HTTP/1.1 200", "HTTP/1.1 202", "HTTP/1.1 200", "HTTP/1.1 418", "HTTP/1.1 200"])
    }
}

extension DaemonTests {
    /// A connected loopback socket with a 3 s receive timeout.
    func openSocket(_ port: Int) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(connected == 0)
        var timeout = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    @Test("route, method, token and content type are judged from the head: refused requests are answered before their body",
          arguments: [
              ("POST /nope HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n", "404"),
              ("PUT /items HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n", "405"),
              ("POST /items HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n", "401"),
              ("POST /items HTTP/1.1\r\nAuthorization: Bearer t0ken\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n", "415"),
              ("POST /items HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n", "401"),
          ])
    func judgedBeforeBody(head: String, status: String) async throws {
        var router = makeRouter()
        router.writeToken = "t0ken"
        let daemon = HTTPDaemon(router: router, host: "127.0.0.1", port: 0, threads: 1, maxBodySize: 4096)
        let port = try daemon.start()
        defer { daemon.stop(drainFor: 1) }
        let fd = openSocket(port)
        defer { close(fd) }
        // The head and a first bit of body, then nothing more: the answer must not wait for the rest.
        let request = Array((head + "Host: 127.0.0.1\r\n\r\n").utf8) + Array(head.contains("chunked") ? "10\r\n{\"a\":".utf8 : "{\"a\":".utf8)
        _ = request.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = read(fd, &buffer, buffer.count)
        #expect(n > 0, "no answer before the body was complete")
        #expect(String(decoding: buffer[0..<max(0, n)], as: UTF8.self).hasPrefix("HTTP/1.1 \(status)"))
    }
}

/// A thread-safe counter for callbacks.
final class Counter: Sendable {
    private let count = Mutex(0)
    func increment() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}
