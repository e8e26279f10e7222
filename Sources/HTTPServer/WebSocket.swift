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

/// What one WebSocket endpoint allows each connection, and how many connections.
public struct WebSocketLimits: Sendable, Equatable {
    /// Bytes queued for one client at most (messages, pongs and pings alike): past it the
    /// client is too slow and is closed with 1008.
    public var sendLimit: Int
    /// A ping goes out this often (seconds); a client that sends nothing, not even a pong,
    /// for twice as long is closed.
    public var pingInterval: Double
    /// Open connections at most; the next upgrade is answered `503`.
    public var maxClients: Int
    /// How long a closing connection waits for its close frame to go out and the client's
    /// to come back, whether or not the client reads, before the socket is dropped.
    public var closeTimeout: Double

    public init(sendLimit: Int = 1 << 20, pingInterval: Double = 30, maxClients: Int = 1_000, closeTimeout: Double = 2) {
        self.sendLimit = sendLimit
        self.pingInterval = pingInterval
        self.maxClients = maxClients
        self.closeTimeout = closeTimeout
    }
}

/// One accepted WebSocket connection (RFC 6455) on a socket libmicrohttpd handed over after
/// the `101` upgrade. A thread of its own reads and writes it; `send` only queues, so a slow
/// client never blocks the sender. Everything queued for the client (messages, pongs, pings)
/// counts against ``WebSocketLimits/sendLimit``: past it, what is not yet on its way is dropped
/// and the connection closes with 1008. A closing connection is dropped after
/// ``WebSocketLimits/closeTimeout`` whether or not the client reads; one that stays silent for
/// two ping intervals is closed too.
public final class WebSocket: Sendable {
    /// What this connection may queue, and its keep-alive and close timings.
    public let limits: WebSocketLimits
    let socket: Int32
    let onClose: @Sendable () -> Void
    private let delegate: any WebSocketDelegate
    private let state: Mutex<State>
    private let wakeFD: Int32

    struct State {
        /// Frames to send, whole; the first may be partly sent (`sentOfFirst` bytes).
        var frames: [[UInt8]] = []
        var sentOfFirst = 0
        var queued = 0       // bytes in `frames` not sent yet
        var closing = false  // a close frame is queued: no more sends
        var closingSince: ContinuousClock.Instant?
        var closed = false

        mutating func append(_ frame: [UInt8]) {
            frames.append(frame)
            queued += frame.count
        }

        /// Drops every frame not yet begun and queues `close` as the last.
        mutating func replaceUnsent(with close: [UInt8]) {
            if sentOfFirst > 0 {
                frames.removeSubrange(1...)
                queued = frames[0].count - sentOfFirst
            } else {
                frames.removeAll()
                queued = 0
            }
            append(close)
        }

        mutating func markClosing() {
            closing = true
            if closingSince == nil { closingSince = .now }
        }
    }

    init(socket: Int32, initial: [UInt8], delegate: any WebSocketDelegate, limits: WebSocketLimits = .init(),
         onClose: @escaping @Sendable () -> Void) {
        self.socket = socket
        self.delegate = delegate
        self.limits = limits
        self.onClose = onClose
        self.state = Mutex(State())
        wakeFD = SocketCalls.eventFD()
        SocketCalls.setNonBlocking(socket)
        let thread = Thread { [self] in self.loop(initial) }
        thread.name = "websocket"
        // The connection's thread only parses frames and moves bytes: a small stack will do
        // (each of up to ``WebSocketLimits/maxClients`` clients has one).
        thread.stackSize = 512 * 1024
        thread.start()
    }

    /// Queues a text message; false when the connection is closing or the client is too slow
    /// (it is then closed with 1008).
    @discardableResult
    public func send(_ text: String) -> Bool {
        enqueue(WebSocketFrame.encode(.text, Array(text.utf8)))
    }

    /// Starts the close handshake with `code`.
    public func close(_ code: UInt16 = WebSocketCloseCode.normal, reason: String = "") {
        let frame = WebSocketFrame.close(code, reason)
        state.withLock { s in
            guard !s.closing, !s.closed else { return }
            s.append(frame)
            s.markClosing()
        }
        wake()
    }

    /// Whether the connection is closing or closed.
    public var isClosed: Bool { state.withLock { $0.closing || $0.closed } }

    /// Bytes queued and not yet sent.
    public var queuedBytes: Int { state.withLock { $0.queued } }

    /// Queues `frame` unless closing; past the send limit, closes with 1008 instead.
    @discardableResult
    private func enqueue(_ frame: [UInt8]) -> Bool {
        let accepted = state.withLock { s -> Bool in
            guard !s.closing, !s.closed else { return false }
            if s.queued + frame.count > limits.sendLimit {
                s.replaceUnsent(with: WebSocketFrame.close(WebSocketCloseCode.policyViolation, "client too slow"))
                s.markClosing()
                return false
            }
            s.append(frame)
            return true
        }
        wake()
        return accepted
    }

    private func wake() { SocketCalls.signal(eventFD: wakeFD) }

    // MARK: - The connection's thread

    private func loop(_ initial: [UInt8]) {
        var parser = WebSocketParser(expectMasked: true)
        parser.feed(initial)
        var peerClosed = false
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        let pingEvery = Duration.milliseconds(Int64(limits.pingInterval * 1000))
        var lastHeard = ContinuousClock.now
        var lastPing = lastHeard
        // Whether everything queued for the client went out before the connection ended.
        var flushed = true
        processing: while true {
            // Messages already buffered.
            do {
                while let message = try parser.next() {
                    switch message {
                    case .text(let text): delegate.received(text, on: self)
                    case .binary: close(WebSocketCloseCode.unsupportedData, reason: "text messages only")
                    case .ping(let data): enqueue(WebSocketFrame.encode(.pong, data))
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
            // Keep-alive: a ping per interval; silence for two intervals closes.
            let now = ContinuousClock.now
            if now - lastHeard > pingEvery * 2 {
                close(WebSocketCloseCode.goingAway, reason: "no answer to ping")
            } else if now - lastPing >= pingEvery {
                enqueue(WebSocketFrame.encode(.ping, []))
                lastPing = now
            }
            // Write what is queued.
            if state.withLock({ SocketCalls.send(socket, &$0) }) == .failed { break processing }
            let (drained, closingSince) = state.withLock { ($0.queued == 0, $0.closingSince) }
            if let closingSince {
                if drained && peerClosed { break processing }
                // Our close is out (or stuck behind a client that does not read): wait a
                // little for the client's, then go.
                if ContinuousClock.now - closingSince > .milliseconds(Int64(limits.closeTimeout * 1000)) {
                    flushed = drained
                    break processing
                }
            }
            // Wake for the next ping (or, closing, to check the close timeout).
            let untilPing = (pingEvery - (ContinuousClock.now - lastPing)) / .milliseconds(1)
            let waitMs = closingSince != nil ? 100 : Int32(min(30_000, max(1, untilPing.rounded(.up) + 1)))
            switch SocketCalls.wait(socket, wakeFD: wakeFD, writable: !drained, timeoutMs: waitMs) {
            case .failed, .hangUp: break processing
            case .idle: break
            case .readable:
                switch SocketCalls.receive(socket, into: &buffer) {
                case .closed: break processing  // the client went away
                case .wouldBlock: break
                case .bytes(let n):
                    lastHeard = .now
                    if !peerClosed { parser.feed(buffer[0..<n]) }
                }
            }
        }
        state.withLock {
            $0.closed = true
            $0.frames.removeAll()
            $0.queued = 0
        }
        SocketCalls.closeFD(wakeFD)
        // A client that does not read what is sent to it (even our close frame is stuck) is cut
        // off now, not when libmicrohttpd gets to close the socket: it would go on sending into
        // a socket nobody reads until then. One that reads gets our close frame, then the end.
        if !flushed { SocketCalls.abort(socket) }
        delegate.closed(self)
        onClose()  // hands the socket back to libmicrohttpd to close
    }

    /// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
    public static func acceptKey(for key: String) -> String {
        let digest = Insecure.SHA1.hash(data: Data((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8))
        return Data(digest).base64EncodedString()
    }
}
