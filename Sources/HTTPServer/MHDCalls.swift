import CMicroHTTPD
import Foundation
import Synchronization

// Every libmicrohttpd call of the adapter and its `@convention(c)` trampolines live in
// this file. The trampolines copy the request into Swift values, suspend the connection
// and hand it off; they never block or await.

/// The per-request state MHD keeps in `con_cls`.
///
/// `@unchecked Sendable`: the request fields are written only on the MHD thread that owns
/// the connection, before the hand-off; `response` is guarded by its mutex and set by the
/// handler's task before `MHD_resume_connection`.
final class RequestContext: @unchecked Sendable {
    var request: HTTPRequest
    /// The route found from the request's head, before any body was read.
    var matched: Router.Match?
    var dispatched = false
    let response = Mutex<HTTPResponse?>(nil)

    init(request: HTTPRequest) { self.request = request }

    /// Stores `response` unless one is stored already; returns whether it was stored.
    func settle(_ response: HTTPResponse) -> Bool {
        self.response.withLock { current in
            guard current == nil else { return false }
            current = response
            return true
        }
    }
}

/// Collects key-value pairs for `MHD_get_connection_values`.
private final class Pairs {
    var values: [String: String] = [:]
    let lowercase: Bool
    init(lowercase: Bool) { self.lowercase = lowercase }
}

private let collectPair: MHD_KeyValueIterator = { cls, _, key, value in
    guard let cls, let key else { return .YES }
    let pairs = Unmanaged<Pairs>.fromOpaque(cls).takeUnretainedValue()
    let name = String(cString: key)
    pairs.values[pairs.lowercase ? name.lowercased() : name] = value.map { String(cString: $0) } ?? ""
    return .YES
}

/// Calls `MHD_get_connection_values` for one kind of values.
private func connectionValues(_ connection: OpaquePointer, _ kind: MHD_ValueKind, lowercase: Bool) -> [String: String] {
    let pairs = Pairs(lowercase: lowercase)
    let unmanaged = Unmanaged.passRetained(pairs)
    defer { unmanaged.release() }
    _ = MHD_get_connection_values(connection, kind, collectPair, unmanaged.toOpaque())
    return pairs.values
}

/// Reads a `ResponseStream` for MHD: buffered bytes, the end, or (nothing yet) suspends the
/// connection until the next write resumes it.
private let streamReader: MHD_ContentReaderCallback = { cls, _, buf, max in
    guard let cls, let buf else { return -2 }
    let box = Unmanaged<StreamBox>.fromOpaque(cls).takeUnretainedValue()
    return box.stream.state.withLock { s -> Int in
        if !s.buffer.isEmpty {
            let n = min(max, s.buffer.count)
            s.buffer.withUnsafeBytes { UnsafeMutableRawPointer(buf).copyMemory(from: $0.baseAddress!, byteCount: n) }
            s.buffer.removeFirst(n)
            return n
        }
        if s.finished { return -1 }  // MHD_CONTENT_READER_END_OF_STREAM
        s.waiting = true
        MHD_suspend_connection(OpaquePointer(bitPattern: box.connection))
        return 0
    }
}

private let streamFree: MHD_ContentReaderFreeCallback = { cls in
    guard let cls else { return }
    let box = Unmanaged<StreamBox>.fromOpaque(cls).takeRetainedValue()
    box.daemon.streamEnded(box.stream)
    box.stream.closed()
}

/// What the stream reader needs: the stream, its connection and the daemon.
///
/// `@unchecked Sendable`: `connection` is written once before MHD sees the box.
final class StreamBox: @unchecked Sendable {
    let stream: ResponseStream
    let connection: UInt
    let daemon: HTTPDaemon
    init(stream: ResponseStream, connection: UInt, daemon: HTTPDaemon) {
        self.stream = stream
        self.connection = connection
        self.daemon = daemon
    }
}

/// The bytes of a large response body, read by ``bodyReader`` at the offsets MHD asks for.
final class BodyBox: Sendable {
    /// Bodies from this size on are read a chunk of this size at a time.
    static let chunk = 64 * 1024
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
}

private let bodyReader: MHD_ContentReaderCallback = { cls, position, buf, max in
    guard let cls, let buf else { return -2 }  // MHD_CONTENT_READER_END_WITH_ERROR
    let bytes = Unmanaged<BodyBox>.fromOpaque(cls).takeUnretainedValue().bytes
    guard position < UInt64(bytes.count) else { return -1 }  // MHD_CONTENT_READER_END_OF_STREAM
    let from = Int(position), n = min(max, bytes.count - from)
    bytes.withUnsafeBytes { UnsafeMutableRawPointer(buf).copyMemory(from: $0.baseAddress! + from, byteCount: n) }
    return n
}

private let bodyFree: MHD_ContentReaderFreeCallback = { cls in
    guard let cls else { return }
    Unmanaged<BodyBox>.fromOpaque(cls).release()
}

private let generatedReader: MHD_ContentReaderCallback = { cls, _, buf, max in
    guard let cls, let buf else { return -2 }  // MHD_CONTENT_READER_END_WITH_ERROR
    let n = Unmanaged<GeneratedBody>.fromOpaque(cls).takeUnretainedValue()
        .read(into: UnsafeMutableRawBufferPointer(start: buf, count: max))
    return n > 0 ? n : -1  // MHD_CONTENT_READER_END_OF_STREAM
}

private let generatedFree: MHD_ContentReaderFreeCallback = { cls in
    guard let cls else { return }
    Unmanaged<GeneratedBody>.fromOpaque(cls).release()
}

/// What the upgrade handler needs.
final class UpgradeBox: Sendable {
    let upgrade: WebSocketUpgrade
    let daemon: HTTPDaemon
    init(upgrade: WebSocketUpgrade, daemon: HTTPDaemon) {
        self.upgrade = upgrade
        self.daemon = daemon
    }
}

/// After the `101`: the socket is ours until `MHD_upgrade_action(CLOSE)` hands it back.
private let upgradeHandler: MHD_UpgradeHandler = { cls, _, _, extraIn, extraInSize, sock, urh in
    guard let cls else { return }
    let box = Unmanaged<UpgradeBox>.fromOpaque(cls).takeRetainedValue()
    let initial = extraIn.map { Array(UnsafeRawBufferPointer(start: $0, count: extraInSize)) } ?? []
    let handle = UInt(bitPattern: urh)
    let daemon = box.daemon
    let socket = WebSocket(socket: sock, initial: initial, delegate: box.upgrade.delegate,
                           limits: box.upgrade.limits) {
        daemon.webSocketEnded(handle)
        _ = stega_mhd_upgrade_close(OpaquePointer(bitPattern: handle))
    }
    daemon.webSocketStarted(socket, handle: handle)
}

/// Calls `MHD_create_response_from_buffer` (or `MHD_create_response_from_callback` for a
/// stream, a generated body or a large one, `MHD_create_response_for_upgrade` for a WebSocket), `MHD_add_response_header`,
/// `MHD_queue_response` and `MHD_destroy_response`.
private func queue(_ response: HTTPResponse, on connection: OpaquePointer, daemon: HTTPDaemon? = nil) -> MHD_Result {
    let mhdResponse: OpaquePointer?
    if let upgrade = response.upgrade, let daemon, daemon.webSocketCount >= upgrade.limits.maxClients {
        // Each client holds a thread and two descriptors: the cap keeps them bounded.
        return queue(.error(HTTPError(503, "too_many_clients",
                                      "at most \(upgrade.limits.maxClients) WebSocket clients; try again later",
                                      headers: ["Retry-After": "5"])), on: connection)
    } else if let upgrade = response.upgrade, let daemon {
        mhdResponse = MHD_create_response_for_upgrade(
            upgradeHandler, Unmanaged.passRetained(UpgradeBox(upgrade: upgrade, daemon: daemon)).toOpaque())
    } else if let stream = response.stream, let daemon {
        let bits = UInt(bitPattern: connection)
        let box = StreamBox(stream: stream, connection: bits, daemon: daemon)
        daemon.streamStarted(stream, connection: bits)
        mhdResponse = MHD_create_response_from_callback(UInt64.max, 4096, streamReader,
                                                        Unmanaged.passRetained(box).toOpaque(), streamFree)
    } else if let generated = response.generated {
        mhdResponse = MHD_create_response_from_callback(UInt64.max, BodyBox.chunk, generatedReader,
                                                        Unmanaged.passRetained(generated).toOpaque(), generatedFree)
    } else if response.body.count >= BodyBox.chunk {
        // A large body is read from the response's own bytes as MHD sends it, a chunk at a
        // time, instead of being copied whole into MHD's memory.
        mhdResponse = MHD_create_response_from_callback(UInt64(response.body.count), BodyBox.chunk, bodyReader,
                                                        Unmanaged.passRetained(BodyBox(response.body)).toOpaque(),
                                                        bodyFree)
    } else {
        mhdResponse = response.body.withUnsafeBytes { raw in
            MHD_create_response_from_buffer(raw.count, UnsafeMutableRawPointer(mutating: raw.baseAddress),
                                            .RESPMEM_MUST_COPY)
        }
    }
    guard let mhdResponse else { return .NO }
    defer { MHD_destroy_response(mhdResponse) }
    for (name, value) in response.headers {
        _ = MHD_add_response_header(mhdResponse, name, value)
    }
    return MHD_queue_response(connection, UInt32(response.status), mhdResponse)
}

/// The access handler: MHD calls it once with the headers, once per body chunk, once at
/// the end of the body, and once more after each `MHD_resume_connection`.
private let accessHandler: MHD_AccessHandlerCallback = { cls, connection, url, method, _, uploadData, uploadSize, conCls in
    guard let cls, let connection, let conCls, let uploadSize else { return .NO }
    let daemon = Unmanaged<HTTPDaemon>.fromOpaque(cls).takeUnretainedValue()

    guard let existing = conCls.pointee else {
        // First call: headers only. Answer nothing yet (a response queued now would be
        // sent with `Connection: close`), except for a body announced over the limit.
        let headers = connectionValues(connection, .HEADER_KIND, lowercase: true)
        let request = HTTPRequest(
            method: method.map { String(cString: $0) } ?? "GET",
            path: url.map { String(cString: $0) } ?? "/",
            query: connectionValues(connection, .GET_ARGUMENT_KIND, lowercase: false),
            headers: headers)
        let context = RequestContext(request: request)
        conCls.pointee = Unmanaged.passRetained(context).toOpaque()
        // Counted before the stopping check: `stop` either sees this request or we see it stopping.
        daemon.requestStarted()
        if daemon.isStopping {
            context.dispatched = true
            let response = HTTPResponse.error(HTTPError(503, "shutting_down", "the server is shutting down",
                                                        headers: ["Connection": "close"]))
            return queue(response, on: connection)
        }
        // Route, method, token and content type are judged from the head: a request refused
        // for any of them is answered before its body is read (the connection then closes, so
        // an unauthenticated upload holds no buffer). The match is kept for the handler.
        let matched = daemon.router.match(request)
        context.matched = matched
        let length = headers["content-length"].flatMap(Int.init)
        let hasBody = (length ?? 0) > 0 || headers["transfer-encoding"] != nil
        if hasBody, case .failure(let error) = matched {
            context.dispatched = true
            return queue(.error(error), on: connection)
        }
        if let length, length > daemon.maxBodySize {
            context.dispatched = true
            let error = HTTPError(413, "payload_too_large", "the request body is over \(daemon.maxBodySize) bytes")
            return queue(.error(error), on: connection)
        }
        return .YES
    }
    let context = Unmanaged<RequestContext>.fromOpaque(existing).takeUnretainedValue()

    if uploadSize.pointee > 0 {
        if !context.request.bodyTooLarge, let uploadData {
            let size = uploadSize.pointee
            if context.request.body.count + size > daemon.maxBodySize {
                context.request.bodyTooLarge = true
                context.request.body = []
            } else {
                uploadData.withMemoryRebound(to: UInt8.self, capacity: size) {
                    context.request.body.append(contentsOf: UnsafeBufferPointer(start: $0, count: size))
                }
            }
        }
        uploadSize.pointee = 0
        return .YES
    }

    if let response = context.response.withLock({ $0 }) {
        return queue(response, on: connection, daemon: daemon)
    }
    guard !context.dispatched else { return .YES }
    context.dispatched = true
    if daemon.isStopping {
        // Not suspended any more once stopping: answer at once.
        return queue(.error(HTTPError(503, "shutting_down", "the server is shutting down")), on: connection)
    }
    // The handler runs on this thread up to its first suspension; answered by then (a
    // rejected body, say), the response goes out at once, or else the connection waits
    // suspended until the handler stores its response (or the daemon, stopping, answers).
    if let response = daemon.handOff(context, connection: UInt(bitPattern: connection)) {
        return queue(response, on: connection, daemon: daemon)
    }
    return .YES
}

private let requestCompleted: MHD_RequestCompletedCallback = { cls, _, conCls, _ in
    guard let cls, let conCls, let existing = conCls.pointee else { return }
    Unmanaged<RequestContext>.fromOpaque(existing).release()
    conCls.pointee = nil
    Unmanaged<HTTPDaemon>.fromOpaque(cls).takeUnretainedValue().requestFinished()
}

/// The running MHD daemon handle.
///
/// `@unchecked Sendable`: the pointer is used only by `start` and `stop`, which the owning
/// `HTTPDaemon` serialises with its lock.
final class MHDHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }

    /// Each connection's memory pool (headers, read and write buffers): half libmicrohttpd's
    /// default. It zeroes the whole pool between two requests of a connection, so a larger
    /// one costs on every request (64 KiB was 4% of returns-api's CPU under load, 32 KiB 3%).
    /// Request headers up to about 14 KB fit; larger ones get libmicrohttpd's 431. Bodies do
    /// not live here (they are copied out as they arrive).
    static let connectionMemory = 16 * 1024

    /// Calls `MHD_start_daemon` (through the shim) bound to `host:port`.
    static func start(daemon: HTTPDaemon, host: String, port: Int, threads: Int) throws -> MHDHandle {
        let flags = MHD_USE_INTERNAL_POLLING_THREAD.rawValue | MHD_USE_EPOLL.rawValue
            | MHD_ALLOW_SUSPEND_RESUME.rawValue | MHD_USE_ERROR_LOG.rawValue | MHD_ALLOW_UPGRADE.rawValue
        let cls = Unmanaged.passUnretained(daemon).toOpaque()
        var pointer: OpaquePointer?
        if host.contains(":") {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = in_port_t(UInt16(port).bigEndian)
            guard inet_pton(AF_INET6, host, &address.sin6_addr) == 1 else {
                throw HTTPServerError("invalid IPv6 address \(host)")
            }
            pointer = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    stega_mhd_start(flags | MHD_USE_IPv6.rawValue, UInt16(port), $0, accessHandler, cls,
                                    requestCompleted, cls, UInt32(threads), 60, connectionMemory)
                }
            }
        } else {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            let name = host == "localhost" ? "127.0.0.1" : host
            guard inet_pton(AF_INET, name, &address.sin_addr) == 1 else {
                throw HTTPServerError("invalid IPv4 address \(host)")
            }
            pointer = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    stega_mhd_start(flags, UInt16(port), $0, accessHandler, cls,
                                    requestCompleted, cls, UInt32(threads), 60, connectionMemory)
                }
            }
        }
        guard let pointer else { throw HTTPServerError("MHD_start_daemon failed on \(host):\(port)") }
        return MHDHandle(pointer)
    }

    /// The port actually bound (`MHD_get_daemon_info` with `MHD_DAEMON_INFO_BIND_PORT`).
    var boundPort: Int {
        Int(stega_mhd_bound_port(pointer))
    }

    /// Calls `MHD_suspend_connection`.
    static func suspend(connection: UInt) {
        MHD_suspend_connection(OpaquePointer(bitPattern: connection))
    }

    /// Calls `MHD_resume_connection` on a connection suspended by the access handler.
    static func resume(connection: UInt) {
        MHD_resume_connection(OpaquePointer(bitPattern: connection))
    }

    /// Calls `MHD_quiesce_daemon`: no new connections are accepted. The listening socket
    /// is then ours to close (after `stop`), or new clients would wait in its backlog.
    func quiesce() -> Int32 { MHD_quiesce_daemon(pointer) }

    /// Closes a socket that `quiesce` handed back.
    static func close(socket: Int32) {
        if socket >= 0 { _ = Glibc.close(socket) }
    }

    /// Calls `MHD_stop_daemon`.
    func stop() { MHD_stop_daemon(pointer) }
}

/// Errors of the HTTP server itself (not of requests).
public struct HTTPServerError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
