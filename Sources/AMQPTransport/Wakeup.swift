import CGlibc
import Glibc

/// An `eventfd` that lets other threads wake an AMQP thread blocked in `poll` on its socket.
final class Wakeup: Sendable {
    // The descriptor is written by any thread (`signal`) and read by the owning thread
    // (`wait`); eventfd reads and writes are atomic.
    private let fd: Int32

    init() {
        fd = eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
        precondition(fd >= 0, "eventfd failed")
    }

    deinit { Glibc.close(fd) }

    /// Wakes the waiting thread (or makes its next `wait` return at once).
    func signal() {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    /// Waits until signalled, `socket` is readable, or `timeout` passes.
    /// Returns whether the socket is readable.
    @discardableResult
    func wait(socket: Int32?, timeout: Double) -> Bool {
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
        if let socket, socket >= 0 { fds.append(pollfd(fd: socket, events: Int16(POLLIN), revents: 0)) }
        let result = poll(&fds, nfds_t(fds.count), Int32(max(0, timeout * 1000)))
        guard result > 0 else { return false }
        if fds[0].revents != 0 {
            var value: UInt64 = 0
            _ = Glibc.read(fd, &value, 8)
        }
        return fds.count > 1 && fds[1].revents != 0
    }
}

/// Exponential back-off with full jitter: 0.25 s doubling up to 30 s.
struct Backoff {
    var attempt = 0
    let base: Double
    let cap: Double

    init(base: Double = 0.25, cap: Double = 30) {
        self.base = base
        self.cap = cap
    }

    mutating func next() -> Double {
        let ceiling = min(cap, base * Double(1 << min(attempt, 16)))
        attempt += 1
        return Double.random(in: (ceiling / 2)...ceiling)
    }

    mutating func reset() { attempt = 0 }
}
