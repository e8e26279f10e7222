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
        guard let fd = SocketCalls.connect(host: host, port: port, receiveTimeout: timeout) else {
            throw HTTPServerError("cannot connect to \(host):\(port)")
        }
        socket = fd
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
            SocketCalls.closeFD(fd)
            throw HTTPServerError("the server refused the WebSocket: \(text.split(separator: "\r\n").first ?? "")")
        }
    }

    deinit { SocketCalls.closeFD(socket) }

    /// Makes reads wait at most `seconds` (``next()`` then answers `.timedOut`).
    public func setReceiveTimeout(_ seconds: Double) {
        SocketCalls.setReceiveTimeout(socket, seconds)
    }

    /// Sends a text message.
    public func send(_ text: String) throws {
        try write(WebSocketFrame.encode(.text, Array(text.utf8), maskKey: (0..<4).map { _ in UInt8.random(in: 0...255) }))
    }

    /// What ``next()`` read.
    public enum Received: Equatable {
        case text(String)
        /// The server closed the connection.
        case closed
        /// Nothing came within the receive time-out; the connection is still usable.
        case timedOut
    }

    /// The next text message, the server's close, or a time-out after the receive time-out
    /// given to `init` (a partly read frame is kept for the next call). Throws on a failed
    /// read or a protocol violation.
    public func next() throws -> Received {
        while true {
            do {
                switch try parser.next() {
                case .text(let text)?: return .text(text)
                case .ping(let data)?: try write(WebSocketFrame.encode(.pong, data, maskKey: [0, 0, 0, 0]))
                case .close?: return .closed
                case .binary?, .pong?: continue
                case nil: break
                }
            } catch let violation as WebSocketViolation {
                throw HTTPServerError("WebSocket protocol error: \(violation.reason)")
            }
            switch SocketCalls.receiveWaiting(socket, upTo: 16 * 1024) {
            case .bytes(let chunk):
                if chunk.isEmpty { return .closed }
                parser.feed(chunk)
            case .timedOut: return .timedOut
            case .failed: throw HTTPServerError("read failed")
            }
        }
    }

    /// Sends a close frame.
    public func close() {
        try? write(WebSocketFrame.close(WebSocketCloseCode.normal, maskKey: [0, 0, 0, 0]))
    }

    private func write(_ bytes: [UInt8]) throws {
        guard SocketCalls.sendAll(socket, bytes) else { throw HTTPServerError("the connection closed") }
    }

    private func read() throws -> [UInt8] {
        switch SocketCalls.receiveWaiting(socket, upTo: 16 * 1024) {
        case .bytes(let bytes): return bytes
        case .timedOut: throw HTTPServerError("timed out waiting for the server")
        case .failed: throw HTTPServerError("read failed")
        }
    }
}

private extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}
