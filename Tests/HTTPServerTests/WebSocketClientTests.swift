import Foundation
import Glibc
import HTTPServer
import Testing

@Suite("WebSocket client")
struct WebSocketClientTests {
    /// A listener on 127.0.0.1 that never accepts, its backlog filled: Linux drops the next
    /// SYN (the client retries it for two minutes), as a host that drops SYNs would.
    private func unanswering() throws -> (port: Int, close: () -> Void) {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                guard bind(listener, raw, length) == 0, listen(listener, 0) == 0,
                      getsockname(listener, raw, &length) == 0 else { throw HTTPServerError("listener: errno \(errno)") }
            }
        }
        let port = Int(UInt16(bigEndian: address.sin_port))
        // Connections that fill the accept queue (non-blocking: the last ones stay pending).
        var fillers: [Int32] = []
        for _ in 0..<4 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            var to = address
            _ = withUnsafePointer(to: &to) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            } }
            fillers.append(fd)
        }
        usleep(100_000)
        return (port, { for fd in fillers + [listener] { Glibc.close(fd) } })
    }

    @Test("connecting to a host that does not answer fails after the time-out, not the kernel's two minutes")
    func connectTimeout() async throws {
        let (port, close) = try unanswering()
        defer { close() }
        // Blocking calls on a thread of their own, not on the tests' cooperative pool.
        let (error, took): (String?, Double) = await withCheckedContinuation { continuation in
            Thread {
                let start = Date()
                do {
                    _ = try WebSocketClient(url: URL(string: "ws://127.0.0.1:\(port)/ws")!, timeout: 0.5)
                    continuation.resume(returning: (nil, Date().timeIntervalSince(start)))
                } catch {
                    continuation.resume(returning: ("\(error)", Date().timeIntervalSince(start)))
                }
            }.start()
        }
        #expect(error?.contains("cannot connect to 127.0.0.1:\(port)") == true, "\(error ?? "connected")")
        #expect(took < 5, "took \(took) s")
    }
}
