import CMicroHTTPD  // for eventfd(2) only
import Crypto
import Foundation
import Synchronization

/// What a WebSocket endpoint does with its connections.
public protocol WebSocketDelegate: Sendable {
    /// A text message arrived.
    func received(_ text: String, on socket: WebSocket)
    /// The connection closed (by either side); no more sends go out.
    func closed(_ socket: WebSocket)
}

/// One accepted WebSocket connection (RFC 6455) on a socket libmicrohttpd handed over after
/// the `101` upgrade. A thread of its own reads and writes it; `send` only queues, so a slow
/// client never blocks the sender: past `sendLimit` queued bytes it is closed with 1008.
public final class WebSocket: Sendable {
    /// Bytes queued for one client at most.
    public let sendLimit: Int
    let socket: Int32
    let onClose: @Sendable () -> Void
    private let delegate: any WebSocketDelegate
    private let state: Mutex<State>
    private let wakeFD: Int32

    struct State {
        var outgoing: [UInt8] = []
        var closing = false   // a close frame is queued: no more sends
        var closed = false
    }

    init(socket: Int32, initial: [UInt8], delegate: any WebSocketDelegate, sendLimit: Int,
         onClose: @escaping @Sendable () -> Void) {
        self.socket = socket
        self.delegate = delegate
        self.sendLimit = sendLimit
        self.onClose = onClose
        self.state = Mutex(State())
        wakeFD = eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
        let flags = fcntl(socket, F_GETFL, 0)
        _ = fcntl(socket, F_SETFL, flags | O_NONBLOCK)
        let thread = Thread { [self] in self.loop(initial) }
        thread.name = "websocket"
        thread.start()
    }

    /// Queues a text message; false when the connection is closing or the client is too slow
    /// (it is then closed with 1008).
    @discardableResult
    public func send(_ text: String) -> Bool {
        enqueue(WebSocketFrame.encode(.text, Array(text.utf8)), closing: false)
    }

    /// Starts the close handshake with `code`.
    public func close(_ code: UInt16 = WebSocketCloseCode.normal, reason: String = "") {
        enqueue(WebSocketFrame.close(code, reason), closing: true)
    }

    /// Whether the connection is closing or closed.
    public var isClosed: Bool { state.withLock { $0.closing || $0.closed } }

    @discardableResult
    private func enqueue(_ frame: [UInt8], closing: Bool) -> Bool {
        let accepted = state.withLock { s -> Bool in
            guard !s.closing, !s.closed else { return false }
            if s.outgoing.count + frame.count > sendLimit {
                s.outgoing = WebSocketFrame.close(WebSocketCloseCode.policyViolation, "client too slow")
                s.closing = true
                return false
            }
            s.outgoing += frame
            if closing { s.closing = true }
            return true
        }
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
        return accepted
    }

    // MARK: - The connection's thread

    private func loop(_ initial: [UInt8]) {
        var parser = WebSocketParser(expectMasked: true)
        parser.feed(initial)
        var peerClosed = false
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        var closeDeadline: Date?
        processing: while true {
            // Messages already buffered.
            do {
                while let message = try parser.next() {
                    switch message {
                    case .text(let text): delegate.received(text, on: self)
                    case .binary: close(WebSocketCloseCode.unsupportedData, reason: "text messages only")
                    case .ping(let data): _ = enqueueControl(WebSocketFrame.encode(.pong, data))
                    case .pong: break
                    case .close(let code, _):
                        peerClosed = true
                        // Echo the close (a status-less close is answered with 1000).
                        close(code == WebSocketCloseCode.noStatus ? WebSocketCloseCode.normal : code)
                    }
                    if peerClosed { break }
                }
            } catch {
                close(error.code, reason: error.reason)
                peerClosed = true  // nothing more is read from a client that broke the protocol
            }
            // Write what is queued.
            let (pending, closing) = state.withLock { ($0.outgoing, $0.closing) }
            if !pending.isEmpty {
                let written = pending.withUnsafeBytes { Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if written < 0, errno != EAGAIN, errno != EWOULDBLOCK { break processing }
                if written > 0 { state.withLock { $0.outgoing.removeFirst(min(written, $0.outgoing.count)) } }
            }
            let drained = state.withLock { $0.outgoing.isEmpty }
            if closing && drained {
                if peerClosed { break processing }
                // Our close is out: wait a little for the client's, then go.
                if closeDeadline == nil { closeDeadline = Date().addingTimeInterval(2) }
                if Date() > closeDeadline! { break processing }
            }
            var fds = [pollfd(fd: socket, events: Int16(POLLIN) | (drained ? 0 : Int16(POLLOUT)), revents: 0),
                       pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
            guard poll(&fds, 2, closing ? 100 : 30_000) >= 0 else { break }
            if fds[1].revents != 0 {
                var value: UInt64 = 0
                _ = Glibc.read(wakeFD, &value, 8)
            }
            if fds[0].revents & Int16(POLLIN) != 0 {
                let n = buffer.withUnsafeMutableBytes { Glibc.recv(socket, $0.baseAddress, $0.count, 0) }
                if n == 0 { break processing }  // the client went away
                if n < 0, errno != EAGAIN, errno != EWOULDBLOCK { break processing }
                if n > 0, !peerClosed { parser.feed(buffer[0..<n]) }
            } else if fds[0].revents & Int16(POLLHUP | POLLERR) != 0 {
                break processing
            }
        }
        state.withLock {
            $0.closed = true
            $0.outgoing.removeAll()
        }
        Glibc.close(wakeFD)
        delegate.closed(self)
        onClose()  // hands the socket back to libmicrohttpd to close
    }

    private func enqueueControl(_ frame: [UInt8]) -> Bool {
        state.withLock { s -> Bool in
            guard !s.closed else { return false }
            s.outgoing += frame
            return true
        }
    }

    /// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
    public static func acceptKey(for key: String) -> String {
        let digest = Insecure.SHA1.hash(data: Data((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8))
        return Data(digest).base64EncodedString()
    }
}
