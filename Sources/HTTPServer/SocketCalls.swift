import CSystem
import Foundation
import Synchronization

/// Every system call of a WebSocket connection's thread: its non-blocking socket, the
/// eventfd that wakes it when something is queued, and the poll that waits on both.
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
}
