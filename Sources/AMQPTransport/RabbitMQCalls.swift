import CRabbitMQ
import EventCatalog
import Foundation

// Every rabbitmq-c call of the adapter lives in this file; each return code becomes an
// `AMQPError` here, once. Nothing outside this file touches a C type.

/// AMQP method ids (`AMQP_*_METHOD`), which Swift cannot import from their cast macros.
enum AMQPMethod {
    static let connectionClose: UInt32 = 0x000A_0032
    static let channelClose: UInt32 = 0x0014_0028
    static let basicCancel: UInt32 = 0x003C_001E
    static let basicReturn: UInt32 = 0x003C_0032
    static let basicAck: UInt32 = 0x003C_0050
    static let basicNack: UInt32 = 0x003C_0078
    static let basicGetOk: UInt32 = 0x003C_0047
}

/// A delivery from the broker, copied out of rabbitmq-c's memory.
struct ReceivedDelivery: Sendable {
    var deliveryTag: UInt64
    var redelivered: Bool
    var message: AMQPMessage
}

/// What one read of the consumer's connection produced.
enum ConsumerRead {
    case delivery(ReceivedDelivery)
    case frame(ServerFrame)
    case nothing
}

/// A header value as read from an AMQP table.
enum HeaderValue: Sendable, Equatable {
    case string(String)
    case int(Int64)
    /// A boolean (declaration arguments such as `x-single-active-consumer`).
    case bool(Bool)
    case other

    var string: String? {
        switch self {
        case .string(let s): return s
        case .int(let i): return String(i)
        case .bool(let b): return b ? "true" : "false"
        case .other: return nil
        }
    }

    var int: Int? {
        switch self {
        case .int(let i): return Int(i)
        case .string(let s): return Int(s)
        case .bool, .other: return nil
        }
    }
}

/// Something the broker sent that is not a delivery.
enum ServerFrame {
    case ack(tag: UInt64, multiple: Bool)
    case nack(tag: UInt64, multiple: Bool)
    case returned(AMQPMessage, replyText: String)
    case consumerCancelled
    case other
}

/// One rabbitmq-c connection with channel 1 open. Not thread-safe: its owner (the thread of
/// an `AMQPPublisher` or an `AMQPConsumer`) makes every call.
final class RabbitMQConnection {
    private let state: amqp_connection_state_t
    private var open = false
    /// The strings and header entries of the message being published.
    private var scratch = PublishScratch()
    static let channel: amqp_channel_t = 1

    /// A connection to the first of `settings.nodes`, in `order` (indices; all of them in
    /// turn by default), that answers, and that node's index; throws the last node's error
    /// when none does.
    static func connect(settings: AMQPSettings, order: [Int]? = nil,
                        connectTimeout: TimeInterval = 5) throws -> (connection: RabbitMQConnection, node: Int) {
        var lastError: any Error = AMQPError(.connection, "no broker node to connect to")
        for index in order ?? Array(settings.nodes.indices) where settings.nodes.indices.contains(index) {
            do {
                return (try RabbitMQConnection(settings: settings, node: settings.nodes[index], connectTimeout: connectTimeout),
                        index)
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    /// Calls `amqp_new_connection`, `amqp_tcp_socket_new` (or `amqp_ssl_socket_new`),
    /// `amqp_socket_open_noblock`, `amqp_login` and `amqp_channel_open` for `node`.
    init(settings: AMQPSettings, node url: AMQPURL, connectTimeout: TimeInterval = 5) throws {
        guard let state = amqp_new_connection() else {
            throw AMQPError(.library, "out of memory", context: "amqp_new_connection")
        }
        self.state = state
        let socket: OpaquePointer?
        if url.tls {
            socket = amqp_ssl_socket_new(state)
            if let socket {
                amqp_ssl_socket_set_verify_peer(socket, settings.verifyPeer ? 1 : 0)
                amqp_ssl_socket_set_verify_hostname(socket, settings.verifyPeer ? 1 : 0)
                if let ca = settings.caCertificatePath {
                    try check(amqp_ssl_socket_set_cacert(socket, ca), "amqp_ssl_socket_set_cacert")
                }
            }
        } else {
            socket = amqp_tcp_socket_new(state)
        }
        guard let socket else {
            throw AMQPError(.library, "could not create socket", context: "amqp_tcp_socket_new")
        }
        var timeout = Glibc.timeval(tv_sec: Int(connectTimeout), tv_usec: 0)
        let status = amqp_socket_open_noblock(socket, url.host, Int32(url.port), &timeout)
        guard status == AMQP_STATUS_OK.rawValue else {
            throw AMQPError(.connection, "\(url.host):\(url.port): \(Self.errorString(status))",
                            context: "amqp_socket_open_noblock")
        }
        var rpcTimeout = Glibc.timeval(tv_sec: 10, tv_usec: 0)
        _ = amqp_set_rpc_timeout(state, &rpcTimeout)
        try checkReply(
            stega_amqp_login_plain(state, url.vhost, 0, 131_072, Int32(settings.heartbeatSeconds),
                                   url.user, url.password),
            "amqp_login")
        open = true
        _ = amqp_channel_open(state, Self.channel)
        try checkReply(amqp_get_rpc_reply(state), "amqp_channel_open")
    }

    deinit {
        close()
        amqp_destroy_connection(state)
    }

    /// Calls `amqp_channel_close` and `amqp_connection_close` (best effort, once).
    func close() {
        guard open else { return }
        open = false
        _ = amqp_channel_close(state, Self.channel, Int32(AMQP_REPLY_SUCCESS))
        _ = amqp_connection_close(state, Int32(AMQP_REPLY_SUCCESS))
    }

    /// Marks the connection unusable without talking to the broker (after a socket error).
    func abandon() { open = false }

    /// The local TCP port of the connection (`getsockname` on `amqp_get_sockfd`).
    var localPort: Int? {
        var address = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socketFD, $0, &length) }
        }
        guard result == 0 else { return nil }
        return withUnsafePointer(to: &address) { pointer -> Int? in
            switch Int32(pointer.pointee.ss_family) {
            case AF_INET:
                return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
            case AF_INET6:
                return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
            default:
                return nil
            }
        }
    }

    /// The socket's file descriptor (`amqp_get_sockfd`).
    var socketFD: Int32 { amqp_get_sockfd(state) }

    /// Runs `body` with the socket corked (`TCP_CORK`), uncorked after it: the frames of its
    /// publishes (`amqp_basic_publish` sends each of a message's three frames with a system call
    /// of its own) leave in full segments, not a segment per frame.
    func batched<T>(_ body: () throws -> T) rethrows -> T {
        let fd = socketFD
        var on: Int32 = 1
        let corked = setsockopt(fd, Int32(IPPROTO_TCP), TCP_CORK, &on, socklen_t(MemoryLayout<Int32>.size)) == 0
        defer {
            if corked {
                var off: Int32 = 0
                _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_CORK, &off, socklen_t(MemoryLayout<Int32>.size))
            }
        }
        return try body()
    }

    /// Whether rabbitmq-c holds data or frames not yet handed out
    /// (`amqp_data_in_buffer`, `amqp_frames_enqueued`).
    var hasBufferedInput: Bool { amqp_data_in_buffer(state) != 0 || amqp_frames_enqueued(state) != 0 }

    /// Calls `amqp_exchange_declare`.
    func declareExchange(_ name: String, type: String, durable: Bool) throws {
        try withBytes([name, type]) { b in
            _ = amqp_exchange_declare(state, Self.channel, b[0], b[1], 0, durable ? 1 : 0, 0, 0,
                                      amqp_table_t(num_entries: 0, entries: nil))
        }
        try checkReply(amqp_get_rpc_reply(state), "amqp_exchange_declare \(name)")
    }

    /// Calls `amqp_queue_declare`; returns the queue's name (server-named when `name` is empty)
    /// and its message count.
    func declareQueue(_ name: String, durable: Bool, exclusive: Bool, autoDelete: Bool,
                      arguments: [String: HeaderValue] = [:]) throws -> (name: String, messages: UInt32) {
        let ok = try withBytes([name]) { b in
            try withTable(arguments) { table in
                amqp_queue_declare(state, Self.channel, b[0], 0, durable ? 1 : 0, exclusive ? 1 : 0,
                                   autoDelete ? 1 : 0, table)
            }
        }
        try checkReply(amqp_get_rpc_reply(state), "amqp_queue_declare \(name)")
        guard let ok else { throw AMQPError(.library, "no declare-ok", context: "amqp_queue_declare") }
        return (Self.string(ok.pointee.queue), ok.pointee.message_count)
    }

    /// Calls `amqp_queue_bind`.
    func bindQueue(_ queue: String, exchange: String, routingKey: String) throws {
        try withBytes([queue, exchange, routingKey]) { b in
            _ = amqp_queue_bind(state, Self.channel, b[0], b[1], b[2],
                                amqp_table_t(num_entries: 0, entries: nil))
        }
        try checkReply(amqp_get_rpc_reply(state), "amqp_queue_bind \(queue) \(routingKey)")
    }

    /// Calls `amqp_basic_qos` with a per-consumer prefetch count.
    func setPrefetch(_ count: UInt16) throws {
        _ = amqp_basic_qos(state, Self.channel, 0, count, 0)
        try checkReply(amqp_get_rpc_reply(state), "amqp_basic_qos")
    }

    /// Calls `amqp_basic_consume`; returns the consumer tag.
    func consume(queue: String, autoAck: Bool, exclusive: Bool) throws -> String {
        let ok = try withBytes([queue, ""]) { b in
            amqp_basic_consume(state, Self.channel, b[0], b[1], 0, autoAck ? 1 : 0, exclusive ? 1 : 0,
                               amqp_table_t(num_entries: 0, entries: nil))
        }
        try checkReply(amqp_get_rpc_reply(state), "amqp_basic_consume \(queue)")
        return ok.map { Self.string($0.pointee.consumer_tag) } ?? ""
    }

    /// Calls `amqp_confirm_select`: the broker will ack or nack every publish.
    func selectConfirms() throws {
        _ = amqp_confirm_select(state, Self.channel)
        try checkReply(amqp_get_rpc_reply(state), "amqp_confirm_select")
    }

    /// Calls `amqp_basic_publish`: `message` to `exchange` with its routing key (or `routingKey`).
    func publish(_ message: AMQPMessage, exchange: String, routingKey: String? = nil, mandatory: Bool) throws {
        var (props, exchangeBytes, keyBytes) = properties(of: message, exchange: exchange,
                                                          routingKey: routingKey ?? message.routingKey)
        let status = message.body.withUnsafeBytes { raw -> Int32 in
            let body = amqp_bytes_t(len: raw.count, bytes: UnsafeMutableRawPointer(mutating: raw.baseAddress))
            return amqp_basic_publish(state, Self.channel, exchangeBytes, keyBytes, mandatory ? 1 : 0, 0, &props, body)
        }
        try check(status, "amqp_basic_publish")
    }

    /// The message's properties (headers included) for rabbitmq-c, and the exchange and routing
    /// key, every string copied into `scratch` (valid until the next message).
    private func properties(of message: AMQPMessage, exchange: String,
                            routingKey: String) -> (amqp_basic_properties_t, exchange: amqp_bytes_t, routingKey: amqp_bytes_t) {
        let headers = message.headers.sorted { $0.key < $1.key }.filter { $0.value != .other }
        var size = exchange.utf8.count + routingKey.utf8.count + (message.contentType?.utf8.count ?? 0)
            + (message.messageId?.utf8.count ?? 0) + (message.type?.utf8.count ?? 0)
            + (message.appId?.utf8.count ?? 0) + (message.correlationId?.utf8.count ?? 0)
        for (key, value) in headers { size += key.utf8.count + (value.string?.utf8.count ?? 0) }
        scratch.reset(bytes: size, entries: headers.count)
        let exchangeBytes = scratch.put(exchange), keyBytes = scratch.put(routingKey)
        var props = amqp_basic_properties_t()
        var flags = amqp_flags_t(AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_HEADERS_FLAG)
        props.delivery_mode = message.deliveryMode
        func set(_ text: String?, _ flag: Int32, _ field: WritableKeyPath<amqp_basic_properties_t, amqp_bytes_t>) {
            guard let text else { return }
            flags |= amqp_flags_t(flag)
            props[keyPath: field] = scratch.put(text)
        }
        set(message.contentType, AMQP_BASIC_CONTENT_TYPE_FLAG, \.content_type)
        set(message.messageId, AMQP_BASIC_MESSAGE_ID_FLAG, \.message_id)
        set(message.type, AMQP_BASIC_TYPE_FLAG, \.type)
        set(message.appId, AMQP_BASIC_APP_ID_FLAG, \.app_id)
        set(message.correlationId, AMQP_BASIC_CORRELATION_ID_FLAG, \.correlation_id)
        if let timestamp = message.timestamp {
            flags |= amqp_flags_t(AMQP_BASIC_TIMESTAMP_FLAG)
            props.timestamp = timestamp
        }
        props._flags = flags
        for (i, (key, value)) in headers.enumerated() {
            var entry = amqp_table_entry_t()
            entry.key = scratch.put(key)
            switch value {
            case .int(let v):
                entry.value.kind = UInt8(AMQP_FIELD_KIND_I64.rawValue)
                entry.value.value.i64 = v
            default:
                entry.value.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
                entry.value.value.bytes = scratch.put(value.string ?? "")
            }
            scratch.entries[i] = entry
        }
        props.headers = amqp_table_t(num_entries: Int32(headers.count), entries: scratch.entries)
        return (props, exchangeBytes, keyBytes)
    }

    /// Calls `amqp_basic_get`, then `amqp_read_message`; `nil` when the queue is empty.
    func get(queue: String) throws -> ReceivedDelivery? {
        let reply = try withBytes([queue]) { b in amqp_basic_get(state, Self.channel, b[0], 0) }
        try checkReply(reply, "amqp_basic_get \(queue)")
        guard reply.reply.id == AMQPMethod.basicGetOk else { return nil }
        let ok = reply.reply.decoded.assumingMemoryBound(to: amqp_basic_get_ok_t.self).pointee
        let tag = ok.delivery_tag
        let redelivered = ok.redelivered != 0
        let key = Self.string(ok.routing_key)
        var message = amqp_message_t()
        try checkReply(amqp_read_message(state, Self.channel, &message, 0), "amqp_read_message")
        defer { amqp_destroy_message(&message) }
        return ReceivedDelivery(deliveryTag: tag, redelivered: redelivered,
                                message: Self.copy(message.properties, message.body, routingKey: key))
    }

    /// Calls `amqp_basic_ack`.
    func ack(_ tag: UInt64, multiple: Bool = false) throws {
        try check(amqp_basic_ack(state, Self.channel, tag, multiple ? 1 : 0), "amqp_basic_ack")
    }

    /// Calls `amqp_basic_nack`.
    func nack(_ tag: UInt64, requeue: Bool) throws {
        try check(amqp_basic_nack(state, Self.channel, tag, 0, requeue ? 1 : 0), "amqp_basic_nack")
    }

    /// Calls `amqp_consume_message` with `timeout` (zero: do not wait). A frame that is not a
    /// delivery (a publisher confirm, a return) is read with `amqp_simple_wait_frame_noblock`
    /// and handed back; a `channel.close` or `connection.close` throws with the server's text.
    func read(timeout: TimeInterval) throws -> ConsumerRead {
        amqp_maybe_release_buffers(state)
        var envelope = amqp_envelope_t()
        var tv = Self.timeval(timeout)
        let reply = amqp_consume_message(state, &envelope, &tv, 0)
        if reply.reply_type == AMQP_RESPONSE_NORMAL {
            defer { amqp_destroy_envelope(&envelope) }
            return .delivery(ReceivedDelivery(
                deliveryTag: envelope.delivery_tag, redelivered: envelope.redelivered != 0,
                message: Self.copy(envelope.message.properties, envelope.message.body,
                                   routingKey: Self.string(envelope.routing_key))))
        }
        if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION {
            if reply.library_error == AMQP_STATUS_TIMEOUT.rawValue { return .nothing }
            if reply.library_error == AMQP_STATUS_UNEXPECTED_STATE.rawValue {
                return try nextFrame(timeout: timeout).map { .frame($0) } ?? .nothing
            }
        }
        try checkReply(reply, "amqp_consume_message")
        return .nothing
    }

    /// Calls `amqp_simple_wait_frame_noblock`; returns `nil` on time-out, throws when the
    /// broker closed the channel or connection.
    func nextFrame(timeout: TimeInterval) throws -> ServerFrame? {
        // Frames are decoded into the connection's pools; what earlier calls returned are
        // Swift copies, so the pools can go (only when no frame is queued: rabbitmq-c checks).
        // Without this the publisher, which reads only with this call, kept every ack and
        // returned message it ever read.
        amqp_maybe_release_buffers(state)
        var frame = amqp_frame_t()
        var tv = Self.timeval(timeout)
        let status = amqp_simple_wait_frame_noblock(state, &frame, &tv)
        if status == AMQP_STATUS_TIMEOUT.rawValue { return nil }
        try check(status, "amqp_simple_wait_frame_noblock")
        guard frame.frame_type == UInt8(AMQP_FRAME_METHOD) else { return .other }
        let method = frame.payload.method
        switch method.id {
        case AMQPMethod.basicAck:
            let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            return .ack(tag: ack.delivery_tag, multiple: ack.multiple != 0)
        case AMQPMethod.basicNack:
            let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            return .nack(tag: nack.delivery_tag, multiple: nack.multiple != 0)
        case AMQPMethod.basicReturn:
            let ret = method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            let key = Self.string(ret.routing_key)
            let text = Self.string(ret.reply_text)
            var message = amqp_message_t()
            try checkReply(amqp_read_message(state, frame.channel, &message, 0), "amqp_read_message")
            defer { amqp_destroy_message(&message) }
            return .returned(Self.copy(message.properties, message.body, routingKey: key), replyText: text)
        case AMQPMethod.basicCancel:
            return .consumerCancelled
        case AMQPMethod.channelClose:
            let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            abandon()
            throw AMQPError(.serverClosedChannel, "\(close.reply_code) \(Self.string(close.reply_text))",
                            context: "channel.close")
        case AMQPMethod.connectionClose:
            let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            abandon()
            throw AMQPError(.serverClosedConnection, "\(close.reply_code) \(Self.string(close.reply_text))",
                            context: "connection.close")
        default:
            return .other
        }
    }

    // MARK: - Conversions

    private static func timeval(_ seconds: TimeInterval) -> Glibc.timeval {
        let whole = Int(seconds)
        return Glibc.timeval(tv_sec: whole, tv_usec: Int((seconds - Double(whole)) * 1_000_000))
    }

    static func string(_ bytes: amqp_bytes_t) -> String {
        guard let base = bytes.bytes, bytes.len > 0 else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: base, count: bytes.len), as: UTF8.self)
    }

    static func errorString(_ status: Int32) -> String {
        amqp_error_string2(status).map { String(cString: $0) } ?? "status \(status)"
    }

    private static func copy(_ props: amqp_basic_properties_t, _ bodyBytes: amqp_bytes_t, routingKey: String) -> AMQPMessage {
        func field(_ flag: Int32, _ value: amqp_bytes_t) -> String? {
            props._flags & amqp_flags_t(flag) != 0 ? string(value) : nil
        }
        var headers: [String: HeaderValue] = [:]
        if props._flags & amqp_flags_t(AMQP_BASIC_HEADERS_FLAG) != 0, let entries = props.headers.entries {
            for i in 0..<Int(props.headers.num_entries) {
                let entry = entries[i]
                let value: HeaderValue
                switch Int(entry.value.kind) {
                case Int(AMQP_FIELD_KIND_UTF8.rawValue), Int(AMQP_FIELD_KIND_BYTES.rawValue):
                    value = .string(string(entry.value.value.bytes))
                case Int(AMQP_FIELD_KIND_I8.rawValue): value = .int(Int64(entry.value.value.i8))
                case Int(AMQP_FIELD_KIND_U8.rawValue): value = .int(Int64(entry.value.value.u8))
                case Int(AMQP_FIELD_KIND_I16.rawValue): value = .int(Int64(entry.value.value.i16))
                case Int(AMQP_FIELD_KIND_U16.rawValue): value = .int(Int64(entry.value.value.u16))
                case Int(AMQP_FIELD_KIND_I32.rawValue): value = .int(Int64(entry.value.value.i32))
                case Int(AMQP_FIELD_KIND_U32.rawValue): value = .int(Int64(entry.value.value.u32))
                case Int(AMQP_FIELD_KIND_I64.rawValue): value = .int(entry.value.value.i64)
                default: value = .other
                }
                headers[string(entry.key)] = value
            }
        }
        let body: [UInt8]
        if let base = bodyBytes.bytes, bodyBytes.len > 0 {
            body = Array(UnsafeRawBufferPointer(start: base, count: bodyBytes.len))
        } else {
            body = []
        }
        return AMQPMessage(
            routingKey: routingKey, body: body,
            messageId: field(AMQP_BASIC_MESSAGE_ID_FLAG, props.message_id),
            type: field(AMQP_BASIC_TYPE_FLAG, props.type),
            contentType: field(AMQP_BASIC_CONTENT_TYPE_FLAG, props.content_type),
            correlationId: field(AMQP_BASIC_CORRELATION_ID_FLAG, props.correlation_id),
            appId: field(AMQP_BASIC_APP_ID_FLAG, props.app_id),
            timestamp: props._flags & amqp_flags_t(AMQP_BASIC_TIMESTAMP_FLAG) != 0 ? props.timestamp : nil,
            headers: headers,
            deliveryMode: props._flags & amqp_flags_t(AMQP_BASIC_DELIVERY_MODE_FLAG) != 0 ? props.delivery_mode : 1)
    }

    // MARK: - Status codes → errors

    private func check(_ status: Int32, _ function: String) throws {
        guard status < 0 else { return }
        if status == AMQP_STATUS_CONNECTION_CLOSED.rawValue || status == AMQP_STATUS_SOCKET_ERROR.rawValue
            || status == AMQP_STATUS_HEARTBEAT_TIMEOUT.rawValue || status == AMQP_STATUS_SSL_ERROR.rawValue {
            abandon()
        }
        throw AMQPError(.library, Self.errorString(status), context: function)
    }

    private func checkReply(_ reply: amqp_rpc_reply_t, _ function: String) throws {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return
        case AMQP_RESPONSE_NONE:
            abandon()
            throw AMQPError(.library, "missing RPC reply", context: function)
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            abandon()
            throw AMQPError(reply.library_error == AMQP_STATUS_SOCKET_ERROR.rawValue ? .connection : .library,
                            Self.errorString(reply.library_error), context: function)
        default:
            abandon()
            switch reply.reply.id {
            case AMQPMethod.connectionClose:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                throw AMQPError(.serverClosedConnection,
                                "\(close.reply_code) \(Self.string(close.reply_text))", context: function)
            case AMQPMethod.channelClose:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                throw AMQPError(.serverClosedChannel,
                                "\(close.reply_code) \(Self.string(close.reply_text))", context: function)
            default:
                throw AMQPError(.library, "unexpected method \(reply.reply.id)", context: function)
            }
        }
    }

    // MARK: - Scoped C memory

    /// Copies `strings` into malloc'ed `amqp_bytes_t`s that live for the call of `body`.
    private func withBytes<R>(_ strings: [String], _ body: ([amqp_bytes_t]) throws -> R) throws -> R {
        let bytes = strings.map { s -> amqp_bytes_t in
            let utf8 = Array(s.utf8)
            let memory = malloc(max(1, utf8.count))!
            utf8.withUnsafeBytes { memory.copyMemory(from: $0.baseAddress!, byteCount: utf8.count) }
            return amqp_bytes_t(len: utf8.count, bytes: memory)
        }
        defer { bytes.forEach { free($0.bytes) } }
        return try body(bytes)
    }

    /// Builds an `amqp_table_t` of `values` that lives for the call of `body`.
    private func withTable<R>(_ values: [String: HeaderValue], _ body: (amqp_table_t) throws -> R) throws -> R {
        let items = values.sorted { $0.key < $1.key }.filter { $0.value != .other }
        guard !items.isEmpty else { return try body(amqp_table_t(num_entries: 0, entries: nil)) }
        let entries = UnsafeMutablePointer<amqp_table_entry_t>.allocate(capacity: items.count)
        defer { entries.deallocate() }
        return try withBytes(items.map(\.key) + items.map { $0.value.string ?? "" }) { b in
            for (i, item) in items.enumerated() {
                var entry = amqp_table_entry_t()
                entry.key = b[i]
                switch item.value {
                case .int(let v):
                    entry.value.kind = UInt8(AMQP_FIELD_KIND_I64.rawValue)
                    entry.value.value.i64 = v
                case .bool(let v):
                    entry.value.kind = UInt8(AMQP_FIELD_KIND_BOOLEAN.rawValue)
                    entry.value.value.boolean = v ? 1 : 0
                default:
                    entry.value.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
                    entry.value.value.bytes = b[items.count + i]
                }
                entries[i] = entry
            }
            return try body(amqp_table_t(num_entries: Int32(items.count), entries: entries))
        }
    }
}

/// The strings and header entries of one message while rabbitmq-c encodes or sends it:
/// memory reused from message to message.
private struct PublishScratch: ~Copyable {
    private var base: UnsafeMutableRawPointer
    private var capacity = 1024
    private(set) var used = 0
    private(set) var entries: UnsafeMutablePointer<amqp_table_entry_t>
    private var entryCapacity = 8

    init() {
        base = malloc(capacity)!
        entries = .allocate(capacity: entryCapacity)
    }

    deinit {
        free(base)
        entries.deallocate()
    }

    /// Empties it, with room for `bytes` of strings and `entries` header entries.
    mutating func reset(bytes: Int, entries count: Int) {
        used = 0
        if bytes > capacity {
            capacity = bytes
            base = realloc(base, capacity)!
        }
        if count > entryCapacity {
            entries.deallocate()
            entryCapacity = count
            entries = .allocate(capacity: entryCapacity)
        }
    }

    /// Copies `text` in (room was reserved by `reset`).
    mutating func put(_ text: String) -> amqp_bytes_t {
        var text = text
        let start = base + used
        let n = text.withUTF8 { utf8 -> Int in
            if let address = utf8.baseAddress { start.copyMemory(from: address, byteCount: utf8.count) }
            return utf8.count
        }
        used += n
        return amqp_bytes_t(len: n, bytes: start)
    }
}
