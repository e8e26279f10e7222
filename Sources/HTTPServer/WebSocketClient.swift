import CMicroHTTPD  // socket constants (MSG_NOSIGNAL)
import Foundation

/// A small blocking WebSocket client (RFC 6455, text messages) for the `stega` CLI and
/// tests: connects over TCP to `ws://host:port/path`, sends masked frames, reads messages.
public final class WebSocketClient {
    private let socket: Int32
    private var parser = WebSocketParser(expectMasked: false)

    /// Connects and completes the handshake; throws `HTTPServerError` on failure.
    public init(url: URL, timeout: Double = 10) throws {
        guard url.scheme == "ws", let host = url.host else { throw HTTPServerError("expected ws://host:port/path, got \(url)") }
        let port = url.port ?? 80
        var hints = addrinfo(ai_flags: 0, ai_family: AF_UNSPEC, ai_socktype: Int32(SOCK_STREAM.rawValue), ai_protocol: 0,
                             ai_addrlen: 0, ai_addr: nil, ai_canonname: nil, ai_next: nil)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &result) == 0, let info = result else {
            throw HTTPServerError("cannot resolve \(host)")
        }
        defer { freeaddrinfo(result) }
        let fd = Glibc.socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
        guard fd >= 0, connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            if fd >= 0 { Glibc.close(fd) }
            throw HTTPServerError("cannot connect to \(host):\(port)")
        }
        socket = fd
        var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let key = Data((0..<16).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        let path = url.path.isEmpty ? "/" : url.path
        try write(Array("GET \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\n\r\n".utf8))
        var head: [UInt8] = []
        while !head.ends(with: [13, 10, 13, 10]) {
            let chunk = try read()
            head += chunk
            if let end = head.firstRange(of: [13, 10, 13, 10]) {
                parser.feed(head[end.upperBound...])
                head = Array(head[..<end.upperBound])
            }
        }
        let text = String(decoding: head, as: UTF8.self)
        guard text.hasPrefix("HTTP/1.1 101"), text.contains(WebSocket.acceptKey(for: key)) else {
            Glibc.close(fd)
            throw HTTPServerError("the server refused the WebSocket: \(text.split(separator: "\r\n").first ?? "")")
        }
    }

    deinit { Glibc.close(socket) }

    /// Sends a text message.
    public func send(_ text: String) throws {
        try write(WebSocketFrame.encode(.text, Array(text.utf8), maskKey: (0..<4).map { _ in UInt8.random(in: 0...255) }))
    }

    /// The next text message; `nil` when the server closed the connection.
    /// Throws on a read time-out (`HTTPServerError`) or a protocol violation.
    public func receive() throws -> String? {
        while true {
            do {
                switch try parser.next() {
                case .text(let text)?: return text
                case .ping(let data)?: try write(WebSocketFrame.encode(.pong, data, maskKey: [0, 0, 0, 0]))
                case .close?: return nil
                case .binary?, .pong?: continue
                case nil: break
                }
            } catch let violation as WebSocketViolation {
                throw HTTPServerError("WebSocket protocol error: \(violation.reason)")
            }
            let chunk = try read()
            if chunk.isEmpty { return nil }
            parser.feed(chunk)
        }
    }

    /// Sends a close frame.
    public func close() {
        try? write(WebSocketFrame.close(WebSocketCloseCode.normal, maskKey: [0, 0, 0, 0]))
    }

    private func write(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw HTTPServerError("the connection closed") }
            sent += n
        }
    }

    private func read() throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        let n = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
        if n < 0 { throw HTTPServerError(errno == EAGAIN ? "timed out waiting for the server" : "read failed") }
        return Array(buffer[0..<n])
    }
}

private extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}
