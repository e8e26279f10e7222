import CGlibc
import Foundation
import Synchronization

/// Every system call of the WebSocket code: a server connection's thread (its non-blocking
/// socket, the eventfd that wakes it when something is queued, the poll that waits on both)
/// and the blocking client of the CLI and tests.
enum SocketCalls {
    /// Calls `eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)`.
    static func eventFD() -> Int32 {
        eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
    }

    /// Calls `write(2)` of 1 on an eventfd.
    static func signal(eventFD fd: Int32) {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    /// Calls `fcntl(F_SETFL, O_NONBLOCK)`.
    static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL, 0)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }

    /// Calls `close(2)`.
    static func closeFD(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    /// Calls `connect(2)` with `AF_UNSPEC`, which drops the TCP connection at once (a reset
    /// when data is left unread) while the descriptor stays open for its owner to close: a
    /// `shutdown(2)` would queue its FIN behind what the peer has not read, so a peer that
    /// never reads would never see it.
    static func abort(_ fd: Int32) {
        var address = sockaddr()
        address.sa_family = sa_family_t(AF_UNSPEC)
        _ = Glibc.connect(fd, &address, socklen_t(MemoryLayout<sockaddr>.size))
    }

    enum SendResult { case ok, failed }

    /// Calls `send(2)` (`MSG_NOSIGNAL`) with the queued frames of `s` until the socket's
    /// buffer is full, and removes what went out; `.failed` when the connection is broken.
    /// The caller holds the state's lock: send(2) on a non-blocking socket does not wait.
    static func send(_ socket: Int32, _ s: inout WebSocket.State) -> SendResult {
            while let first = s.frames.first {
                let offset = s.sentOfFirst
                let written = first.withUnsafeBytes { raw in
                    Glibc.send(socket, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                }
                if written < 0 { return errno == EAGAIN || errno == EWOULDBLOCK ? .ok : .failed }
                s.queued -= written
                if offset + written == first.count {
                    s.frames.removeFirst()
                    s.sentOfFirst = 0
                } else {
                    s.sentOfFirst += written
                    return .ok  // the socket's buffer is full
                }
            }
            return .ok
    }

    enum WaitResult { case readable, idle, hangUp, failed }

    /// Calls `poll(2)` on the socket (readable, and writable when `writable`) and the eventfd,
    /// and drains the eventfd.
    static func wait(_ socket: Int32, wakeFD: Int32, writable: Bool, timeoutMs: Int32) -> WaitResult {
        var fds = [pollfd(fd: socket, events: Int16(POLLIN) | (writable ? Int16(POLLOUT) : 0), revents: 0),
                   pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
        guard poll(&fds, 2, timeoutMs) >= 0 else { return errno == EINTR ? .idle : .failed }
        if fds[1].revents != 0 {
            var value: UInt64 = 0
            _ = Glibc.read(wakeFD, &value, 8)
        }
        if fds[0].revents & Int16(POLLIN) != 0 { return .readable }
        if fds[0].revents & Int16(POLLHUP | POLLERR) != 0 { return .hangUp }
        return .idle
    }

    enum ReceiveResult { case bytes(Int), wouldBlock, closed }

    /// Calls `recv(2)` into `buffer`.
    static func receive(_ socket: Int32, into buffer: inout [UInt8]) -> ReceiveResult {
        let n = buffer.withUnsafeMutableBytes { Glibc.recv(socket, $0.baseAddress, $0.count, 0) }
        if n > 0 { return .bytes(n) }
        if n < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return .wouldBlock }
        return .closed
    }

    // MARK: - The blocking client (WebSocketClient)

    /// Calls `getaddrinfo`, `socket(2)` and `connect(2)` for `host:port`, then `setsockopt`
    /// (`SO_RCVTIMEO`: reads wait at most `receiveTimeout` seconds); `nil` when any fails.
    static func connect(host: String, port: Int, receiveTimeout: Double) -> Int32? {
        var hints = addrinfo(ai_flags: 0, ai_family: AF_UNSPEC, ai_socktype: Int32(SOCK_STREAM.rawValue), ai_protocol: 0,
                             ai_addrlen: 0, ai_addr: nil, ai_canonname: nil, ai_next: nil)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &result) == 0, result != nil else { return nil }
        defer { freeaddrinfo(result) }
        // Each address in turn (`localhost` may be ::1 first, and the server on 127.0.0.1
        // only). Linux's connect(2) honours SO_SNDTIMEO: a host that drops the SYN costs the
        // time-out, not the kernel's two minutes of retries; cleared once connected.
        var next = result
        while let info = next {
            next = info.pointee.ai_next
            let fd = Glibc.socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
            guard fd >= 0 else { continue }
            setTimeout(fd, SO_SNDTIMEO, receiveTimeout)
            guard Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
                Glibc.close(fd)
                continue
            }
            var none = timeval(tv_sec: 0, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, socklen_t(MemoryLayout<timeval>.size))
            setReceiveTimeout(fd, receiveTimeout)
            return fd
        }
        return nil
    }

    /// `SO_RCVTIMEO`: reads on `fd` wait at most `seconds` (at least 1 ms: zero would mean
    /// "wait forever").
    static func setReceiveTimeout(_ fd: Int32, _ requested: Double) {
        setTimeout(fd, SO_RCVTIMEO, requested)
    }

    /// `SO_RCVTIMEO` or `SO_SNDTIMEO` to `requested` seconds, at least 1 ms.
    private static func setTimeout(_ fd: Int32, _ option: Int32, _ requested: Double) {
        let seconds = max(requested, 0.001)
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - seconds.rounded(.down)) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Calls `send(2)` (`MSG_NOSIGNAL`) on a blocking socket until every byte went; `false`
    /// when the connection closed.
    static func sendAll(_ socket: Int32, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return false }
            sent += n
        }
        return true
    }

    enum WaitingReceive { case bytes([UInt8]), timedOut, failed }

    /// Calls `recv(2)` on a blocking socket for at most `limit` bytes (empty: closed).
    static func receiveWaiting(_ socket: Int32, upTo limit: Int) -> WaitingReceive {
        var buffer = [UInt8](repeating: 0, count: limit)
        let n = buffer.withUnsafeMutableBytes { Glibc.recv(socket, $0.baseAddress, $0.count, 0) }
        if n < 0 { return errno == EAGAIN || errno == EINTR ? .timedOut : .failed }
        return .bytes(Array(buffer[0..<n]))
    }
}
