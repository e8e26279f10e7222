import Foundation
@testable import HTTPServer
import Synchronization
import Testing

@Suite("WebSocket framing (RFC 6455)")
struct WebSocketFrameTests {
    let key: [UInt8] = [0x37, 0xfa, 0x21, 0x3d]

    func parse(_ bytes: [UInt8], maxFrame: Int = 1 << 16) -> Result<[WebSocketMessage], WebSocketViolation> {
        var parser = WebSocketParser(expectMasked: true, maxFrameSize: maxFrame)
        parser.feed(bytes)
        var out: [WebSocketMessage] = []
        do {
            while let m = try parser.next() { out.append(m) }
            return .success(out)
        } catch {
            return .failure(error)
        }
    }

    @Test("masked text, the RFC's example; 16- and 64-bit lengths; split across reads")
    func texts() throws {
        // RFC 6455 §5.7: a masked "Hello".
        #expect(try parse([0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]).get() == [.text("Hello")])
        let medium = String(repeating: "é", count: 300), large = String(repeating: "x", count: 70_000)
        #expect(try parse(WebSocketFrame.encode(.text, Array(medium.utf8), maskKey: key)).get() == [.text(medium)])
        #expect(try parse(WebSocketFrame.encode(.text, Array(large.utf8), maskKey: key), maxFrame: 100_000).get() == [.text(large)])
        var parser = WebSocketParser(expectMasked: true)
        let frame = WebSocketFrame.encode(.text, Array("split".utf8), maskKey: key)
        parser.feed(frame[0..<3])
        #expect(try parser.next() == nil)
        parser.feed(frame[3...])
        #expect(try parser.next() == .text("split"))
    }

    @Test("fragments join, with a ping between them; ping, pong and close decode")
    func fragmentsAndControl() throws {
        let bytes = WebSocketFrame.encode(.text, Array("{\"a\":".utf8), fin: false, maskKey: key)
            + WebSocketFrame.encode(.ping, [1, 2], maskKey: key)
            + WebSocketFrame.encode(.continuation, Array("1}".utf8), fin: true, maskKey: key)
            + WebSocketFrame.close(1000, "bye", maskKey: key)
        #expect(try parse(bytes).get() == [.ping([1, 2]), .text("{\"a\":1}"), .close(code: 1000, reason: "bye")])
    }

    @Test("violations map to their close codes", arguments: [
        ("unmasked", [0x81, 0x02, 0x68, 0x69], 1002),
        ("unknown opcode", [0x83, 0x80, 0, 0, 0, 0], 1002),
        ("reserved bit", [0xC1, 0x80, 0, 0, 0, 0], 1002),
        ("fragmented ping", [0x09, 0x80, 0, 0, 0, 0], 1002),
        ("continuation first", [0x80, 0x80, 0, 0, 0, 0], 1002),
        ("bad close code", [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xED], 1002),
    ] as [(String, [UInt8], Int)])
    func violations(name: String, bytes: [UInt8], code: Int) {
        guard case .failure(let v) = parse(bytes) else { Issue.record("\(name) accepted"); return }
        #expect(Int(v.code) == code, "\(name)")
    }

    @Test("oversized frames are 1009, invalid UTF-8 is 1007")
    func limitsAndUTF8() {
        let big = WebSocketFrame.encode(.text, [UInt8](repeating: 0x61, count: 70_000), maskKey: key)
        if case .failure(let v) = parse(big) { #expect(v.code == 1009) } else { Issue.record("accepted") }
        let bad = WebSocketFrame.encode(.text, [0xC3, 0x28], maskKey: key)
        if case .failure(let v) = parse(bad) { #expect(v.code == 1007) } else { Issue.record("accepted") }
    }

    @Test("the accept key of RFC 6455 §1.3")
    func acceptKey() {
        #expect(WebSocket.acceptKey(for: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }
}

/// Records what a WebSocket delivers.
final class Recorder: WebSocketDelegate {
    let texts = Mutex<[String]>([])
    let closedCount = Mutex(0)
    func received(_ text: String, on socket: WebSocket) {
        texts.withLock { $0.append(text) }
        socket.send("echo:" + text)
    }
    func closed(_ socket: WebSocket) { closedCount.withLock { $0 += 1 } }
}

@Suite("WebSocket connections over a socket pair")
struct WebSocketConnectionTests {
    func pair() -> (Int32, Int32) {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        return (fds[0], fds[1])
    }

    /// Reads at least `atLeast` bytes (or until the socket ends or `timeout`), on a thread of
    /// its own: blocking a task's thread would hold up other tests, and a task held up behind
    /// them would read late.
    func read(_ fd: Int32, atLeast: Int, timeout: Double = 5) async -> [UInt8] {
        await withCheckedContinuation { continuation in
            Thread { continuation.resume(returning: Self.blockingRead(fd, atLeast: atLeast, timeout: timeout)) }.start()
        }
    }

    static func blockingRead(_ fd: Int32, atLeast: Int, timeout: Double) -> [UInt8] {
        var out: [UInt8] = []
        let deadline = Date().addingTimeInterval(timeout)
        var buffer = [UInt8](repeating: 0, count: 65536)
        while out.count < atLeast, Date() < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            out += buffer[0..<n]
        }
        return out
    }

    @Test("a text message is handled and answered; a ping gets its pong; a close is echoed and the socket ends")
    func conversation() async {
        let (server, client) = pair()
        defer { close(client) }
        let recorder = Recorder()
        let ended = Counter()
        _ = WebSocket(socket: server, initial: [], delegate: recorder) {
            ended.increment()
            close(server)
        }
        let key: [UInt8] = [1, 2, 3, 4]
        let hello = WebSocketFrame.encode(.text, Array("hi".utf8), maskKey: key)
        _ = hello.withUnsafeBytes { send(client, $0.baseAddress, $0.count, 0) }
        #expect(await read(client, atLeast: 9) == WebSocketFrame.encode(.text, Array("echo:hi".utf8)))
        let ping = WebSocketFrame.encode(.ping, [9], maskKey: key)
        _ = ping.withUnsafeBytes { send(client, $0.baseAddress, $0.count, 0) }
        #expect(await read(client, atLeast: 3) == WebSocketFrame.encode(.pong, [9]))
        let bye = WebSocketFrame.close(1000, "", maskKey: key)
        _ = bye.withUnsafeBytes { send(client, $0.baseAddress, $0.count, 0) }
        #expect(await read(client, atLeast: 4) == WebSocketFrame.close(1000))
        #expect(await waitFor(seconds: 5) { ended.value == 1 } != nil)
        #expect(recorder.closedCount.withLock { $0 } == 1)
    }

    @Test("a client that does not read is closed with 1008 once its queue is full; sends never block")
    func slowClient() async {
        let (server, client) = pair()
        defer { close(client) }
        var size: Int32 = 4096
        setsockopt(server, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(4))
        setsockopt(client, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(4))
        let socket = WebSocket(socket: server, initial: [], delegate: Recorder(),
                               limits: WebSocketLimits(sendLimit: 64 * 1024)) { close(server) }
        let message = String(repeating: "x", count: 1000)
        var refused = 0
        let start = Date()
        for _ in 0..<1000 where !socket.send(message) { refused += 1 }
        #expect(Date().timeIntervalSince(start) < 1, "send blocked")
        #expect(refused > 0)
        #expect(socket.isClosed)
        // Reading now drains what was sent, and ends in the close frame with 1008 (the server
        // ends the socket 2 s after its close; the wait is longer, for a loaded machine: the
        // 4 KiB buffers make the drain many round trips between two threads).
        let bytes = await read(client, atLeast: 1 << 30, timeout: 10)
        let tail = WebSocketFrame.close(1008, "client too slow")
        #expect(Array(bytes.suffix(tail.count)) == tail)
    }

    /// Waits up to `seconds` for `done`, sleeping as a task (the cooperative pool's threads are
    /// few: a test that blocks one starves the others); the time it took, or nil.
    func waitFor(seconds: Double, _ done: () -> Bool) async -> Double? {
        let start = Date()
        while true {
            // Checked once more after the deadline: the task may have slept well past it.
            let elapsed = Date().timeIntervalSince(start)
            if done() { return elapsed }
            if elapsed >= seconds { return nil }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// A connection over a socket pair with 4 KiB buffers (so a client that does not read is
    /// felt at once), the client's end, and a flag set when the server side ends.
    func smallBuffers(_ limits: WebSocketLimits) -> (WebSocket, Int32, Counter) {
        let (server, client) = pair()
        var size: Int32 = 4096
        setsockopt(server, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(4))
        setsockopt(client, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(4))
        let ended = Counter()
        let socket = WebSocket(socket: server, initial: [], delegate: Recorder(), limits: limits) {
            ended.increment()
            close(server)
        }
        return (socket, client, ended)
    }

    /// Writes `bytes` without blocking; how many went out.
    @discardableResult
    func write(_ fd: Int32, _ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
    }

    @Test("pongs count against the send limit: a client that pings and never reads is dropped, memory stays bounded")
    func pingFlood() async {
        let (socket, client, ended) = smallBuffers(WebSocketLimits(sendLimit: 16 * 1024, closeTimeout: 0.5))
        defer { close(client) }
        let ping = WebSocketFrame.encode(.ping, [UInt8](repeating: 7, count: 125), maskKey: [1, 2, 3, 4])
        var most = 0
        // 2,000 pings ask for 254 KB of pongs, 16 times the limit; the client never reads.
        for _ in 0..<2_000 where ended.value == 0 {
            write(client, ping)
            most = max(most, socket.queuedBytes)
            try? await Task.sleep(for: .microseconds(100))
        }
        #expect(most <= 16 * 1024, "the queue held \(most) bytes")
        #expect(await waitFor(seconds: 5) { ended.value == 1 } != nil, "the connection was not dropped")
    }

    @Test("a client that stops reading is dropped within the close timeout of exceeding its queue")
    func slowClientDropped() async {
        let (socket, client, ended) = smallBuffers(WebSocketLimits(sendLimit: 32 * 1024, closeTimeout: 1))
        defer { close(client) }
        let message = String(repeating: "y", count: 1000)
        while socket.send(message) {}
        #expect(socket.isClosed)
        // The client reads nothing: the close frame never gets out, and the socket goes anyway.
        let took = await waitFor(seconds: 5) { ended.value == 1 }
        #expect(took != nil, "a client that does not read held its connection")
        #expect((took ?? 99) >= 0.9, "dropped before the close timeout")
    }

    @Test("pings go out every interval; a client that answers stays, a silent one is closed after two intervals")
    func keepAlive() async {
        let (server, client) = pair()
        defer { close(client) }
        let ended = Counter()
        _ = WebSocket(socket: server, initial: [], delegate: Recorder(),
                      limits: WebSocketLimits(pingInterval: 0.2, closeTimeout: 0.3)) {
            ended.increment()
            close(server)
        }
        // Answer pings for a while, on a thread of its own (a task could be held up behind
        // other tests long enough to miss the deadline): the connection stays.
        let pings = Counter(), answered = Counter(), closedWhileAnswering = Counter()
        Thread {
            var parser = WebSocketParser(expectMasked: false)
            var buffer = [UInt8](repeating: 0, count: 4096)
            let until = Date().addingTimeInterval(1.2)
            while Date() < until {
                var p = pollfd(fd: client, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 50) > 0 else { continue }
                let n = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
                guard n > 0 else { break }
                parser.feed(buffer[0..<n])
                while case .ping(let data)? = try? parser.next() {
                    pings.increment()
                    let pong = WebSocketFrame.encode(.pong, data, maskKey: [9, 9, 9, 9])
                    _ = pong.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                }
            }
            if ended.value > 0 { closedWhileAnswering.increment() }
            answered.increment()
        }.start()
        _ = await waitFor(seconds: 10) { answered.value == 1 }
        let pingCount = pings.value
        #expect(pingCount >= 3, "\(pingCount) pings in 1.2 s at a 0.2 s interval")
        #expect(closedWhileAnswering.value == 0, "a client that answered pings was closed")
        // Now stay silent: closed after about two intervals (0.4 s) plus the close timeout.
        let took = await waitFor(seconds: 5) { ended.value == 1 }
        #expect(took != nil, "a silent client was never closed")
    }
}
