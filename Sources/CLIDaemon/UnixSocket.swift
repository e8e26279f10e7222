#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The thin layer over the socket calls the daemon and its clients make on a unix socket
/// (`socket(2)`, `bind(2)`, `connect(2)`, `SO_PEERCRED`). Hand-written: Foundation has no
/// unix-socket server, and the daemon's needs (a few local clients, one line per message)
/// are too small for an event loop.
enum UnixSocket {
    /// Why `connect` failed.
    enum ConnectFailure: Error, Equatable {
        /// Nothing at the path.
        case missing
        /// A socket file no process listens on (left by a daemon that was killed).
        case refused
        /// Not allowed (the socket is another user's).
        case denied
        /// Something that is not a socket.
        case notSocket
        case other(String)
    }

    /// A `sockaddr_un` for `path`; nil when the path is too long for one.
    private static func address(_ path: String) -> sockaddr_un? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    /// Listens on `path` (which must not exist) with mode 0600.
    static func listen(path: String) throws -> Int32 {
        guard var address = address(path) else { throw DaemonError("the socket path \(path) is too long (at most 107 bytes)") }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw DaemonError("socket(): \(String(cString: strerror(errno)))") }
        // Created 0600 from the start (no window where another user could connect), then
        // set again explicitly.
        let old = umask(0o177)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        let reason = errno
        umask(old)
        guard bound == 0 else {
            close(fd)
            throw DaemonError("cannot listen on \(path): \(String(cString: strerror(reason)))")
        }
        chmod(path, 0o600)
        guard Glibc.listen(fd, 64) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            unlink(path)
            throw DaemonError("cannot listen on \(path): \(reason)")
        }
        return fd
    }

    /// Connects to the socket at `path`.
    static func connect(path: String) -> Result<Int32, ConnectFailure> {
        guard var address = address(path) else { return .failure(.other("the socket path \(path) is too long")) }
        var info = stat()
        if lstat(path, &info) != 0 { return .failure(errno == EACCES ? .denied : .missing) }
        guard info.st_mode & S_IFMT == S_IFSOCK else { return .failure(.notSocket) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(.other(String(cString: strerror(errno)))) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            let reason = errno
            close(fd)
            switch reason {
            case ECONNREFUSED: return .failure(.refused)
            case EACCES, EPERM: return .failure(.denied)
            case ENOENT: return .failure(.missing)
            default: return .failure(.other(String(cString: strerror(reason))))
            }
        }
        return .success(fd)
    }

    /// The user id of the process at the other end of `fd` (`SO_PEERCRED`).
    static func peerUID(_ fd: Int32) -> uid_t? {
        // `struct ucred` (pid, uid, gid), which Glibc's module leaves out (a GNU extension).
        struct Credentials { var pid: Int32 = 0; var uid: UInt32 = 0; var gid: UInt32 = 0 }
        var credentials = Credentials()
        var length = socklen_t(MemoryLayout<Credentials>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0,
              Int(length) == MemoryLayout<Credentials>.size else { return nil }
        return credentials.uid
    }

    /// Whether `path` is a socket.
    static func isSocket(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK
    }
}

/// One connection of the line-delimited JSON protocol: reads lines of at most
/// ``maxLine`` bytes, writes whole lines.
final class LineConnection: @unchecked Sendable {  // used by one thread at a time, except `write` (locked)
    let fd: Int32
    private var buffer: [UInt8] = []
    /// How much of `buffer` holds no line break.
    private var scanned = 0
    private let writeLock = NSLock()
    /// The longest line accepted (a request is a few hundred bytes; an event message of the
    /// boundary is bounded by what the services accept).
    static let maxLine = 4 << 20

    init(fd: Int32, receiveTimeout: Double? = nil) {
        self.fd = fd
        if let receiveTimeout { setReceiveTimeout(receiveTimeout) }
    }

    deinit { close(fd) }

    /// Reads wait at most `requested` seconds (at least 1 ms: zero would mean "wait forever").
    func setReceiveTimeout(_ requested: Double) {
        let seconds = max(requested, 0.001)
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - seconds.rounded(.down)) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    enum ReadError: Error { case tooLong, timedOut, failed }

    /// The next line without its `\n`; nil at the end of the stream.
    func readLine() throws(ReadError) -> String? {
        while true {
            // Only the bytes not looked at yet are searched: a long line costs linear time.
            if let end = buffer[scanned...].firstIndex(of: 10) {
                scanned = 0
                guard end <= Self.maxLine else { throw .tooLong }
                let line = String(decoding: buffer[..<end], as: UTF8.self)
                buffer.removeSubrange(...end)
                return line
            }
            scanned = buffer.count
            guard buffer.count <= Self.maxLine else { throw .tooLong }
            var chunk = [UInt8](repeating: 0, count: 64 * 1024)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw errno == EAGAIN || errno == EWOULDBLOCK ? .timedOut : .failed
            }
            if n == 0 {
                guard !buffer.isEmpty else { return nil }
                defer {
                    buffer = []
                    scanned = 0
                }
                return String(decoding: buffer, as: UTF8.self)
            }
            buffer += chunk[0..<n]
        }
    }

    /// Writes `line` and a `\n`; false when the other end is gone.
    @discardableResult
    func write(_ line: String) -> Bool {
        let bytes = Array((line + "\n").utf8)
        writeLock.lock()
        defer { writeLock.unlock() }
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return false }
            sent += n
        }
        return true
    }

    /// Ends the connection after a last answer without losing it: closing with the client's
    /// bytes unread (an over-long line still being sent) fails its `send` and resets the
    /// connection before it reads the answer. So: no more writes, then what the client still
    /// sends is read and dropped until it closes — 64 MiB or 5 s at most.
    func finish() {
        shutdown(fd, Int32(SHUT_WR))
        setReceiveTimeout(0.5)
        let deadline = ContinuousClock.now + .seconds(5)
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        var dropped = 0
        while dropped < 64 << 20, ContinuousClock.now < deadline {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return }
            dropped += n
        }
    }

    /// Whether the other end closed (or reset) the connection, without waiting.
    var peerClosed: Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, 0) > 0 else { return false }
        if pfd.revents & (Int16(POLLHUP) | Int16(POLLERR)) != 0 { return true }
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT)) == 0
    }
}
