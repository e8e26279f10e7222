/// RFC 6455 framing: encoding frames and parsing them incrementally, with the protocol's
/// rules and limits enforced (each violation names the close code to answer with).
public enum WebSocketOpcode: UInt8, Sendable {
    case continuation = 0, text = 1, binary = 2, close = 8, ping = 9, pong = 10

    var isControl: Bool { rawValue >= 8 }
}

/// Close codes used here (RFC 6455 §7.4.1).
public enum WebSocketCloseCode {
    public static let normal: UInt16 = 1000
    public static let goingAway: UInt16 = 1001
    public static let protocolError: UInt16 = 1002
    public static let unsupportedData: UInt16 = 1003
    public static let noStatus: UInt16 = 1005
    public static let invalidPayload: UInt16 = 1007
    public static let policyViolation: UInt16 = 1008
    public static let messageTooBig: UInt16 = 1009
    public static let internalError: UInt16 = 1011

    /// Whether a peer may send `code` in a close frame.
    static func isValid(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1011, 3000...4999: return true
        default: return false
        }
    }
}

/// What a parser produced.
public enum WebSocketMessage: Equatable, Sendable {
    case text(String)
    case binary([UInt8])
    case ping([UInt8])
    case pong([UInt8])
    case close(code: UInt16, reason: String)
}

/// A protocol violation and the close code that answers it.
public struct WebSocketViolation: Error, Equatable, Sendable {
    public let code: UInt16
    public let reason: String
}

public enum WebSocketFrame {
    /// One frame: unmasked (server to client) unless `maskKey` is given (client to server).
    public static func encode(_ opcode: WebSocketOpcode, _ payload: [UInt8], fin: Bool = true,
                              maskKey: [UInt8]? = nil) -> [UInt8] {
        var out: [UInt8] = [(fin ? 0x80 : 0) | opcode.rawValue]
        let maskBit: UInt8 = maskKey == nil ? 0 : 0x80
        switch payload.count {
        case 0..<126:
            out.append(maskBit | UInt8(payload.count))
        case 126...0xFFFF:
            out.append(maskBit | 126)
            out.append(UInt8(payload.count >> 8))
            out.append(UInt8(payload.count & 0xFF))
        default:
            out.append(maskBit | 127)
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8((UInt64(payload.count) >> UInt64(shift)) & 0xFF)) }
        }
        if let key = maskKey {
            out.append(contentsOf: key)
            out.append(contentsOf: payload.enumerated().map { $0.element ^ key[$0.offset % 4] })
        } else {
            out.append(contentsOf: payload)
        }
        return out
    }

    /// A close frame with `code` and `reason`.
    public static func close(_ code: UInt16, _ reason: String = "", maskKey: [UInt8]? = nil) -> [UInt8] {
        encode(.close, [UInt8(code >> 8), UInt8(code & 0xFF)] + Array(reason.utf8.prefix(123)), maskKey: maskKey)
    }
}

/// Parses frames from a byte stream as they arrive.
public struct WebSocketParser: Sendable {
    /// Server side: client frames must be masked. Client side: server frames must not be.
    public let expectMasked: Bool
    public let maxFrameSize: Int
    public let maxMessageSize: Int
    private var buffer: [UInt8] = []
    private var start = 0
    private var fragments: (opcode: WebSocketOpcode, data: [UInt8])?

    public init(expectMasked: Bool, maxFrameSize: Int = 1 << 16, maxMessageSize: Int = 1 << 20) {
        self.expectMasked = expectMasked
        self.maxFrameSize = maxFrameSize
        self.maxMessageSize = maxMessageSize
    }

    public mutating func feed(_ bytes: some Sequence<UInt8>) {
        if start > 4096, start > buffer.count / 2 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete message, `nil` when more bytes are needed.
    public mutating func next() throws(WebSocketViolation) -> WebSocketMessage? {
        while true {
            let available = buffer.count - start
            guard available >= 2 else { return nil }
            let b0 = buffer[start], b1 = buffer[start + 1]
            let fin = b0 & 0x80 != 0
            guard b0 & 0x70 == 0 else { throw WebSocketViolation(code: WebSocketCloseCode.protocolError, reason: "reserved bits set") }
            guard let opcode = WebSocketOpcode(rawValue: b0 & 0x0F) else {
                throw WebSocketViolation(code: WebSocketCloseCode.protocolError, reason: "unknown opcode \(b0 & 0x0F)")
            }
            let masked = b1 & 0x80 != 0
            guard masked == expectMasked else {
                throw WebSocketViolation(code: WebSocketCloseCode.protocolError,
                                         reason: expectMasked ? "client frames must be masked" : "server frames must not be masked")
            }
            var length = Int(b1 & 0x7F)
            var header = 2
            if length == 126 {
                guard available >= 4 else { return nil }
                length = Int(buffer[start + 2]) << 8 | Int(buffer[start + 3])
                header = 4
            } else if length == 127 {
                guard available >= 10 else { return nil }
                var value: UInt64 = 0
                for i in 0..<8 { value = value << 8 | UInt64(buffer[start + 2 + i]) }
                guard value >> 63 == 0 else { throw WebSocketViolation(code: WebSocketCloseCode.protocolError, reason: "bad length") }
                guard value <= UInt64(maxFrameSize) else {
                    throw WebSocketViolation(code: WebSocketCloseCode.messageTooBig, reason: "frame over \(maxFrameSize) bytes")
                }
                length = Int(value)
                header = 10
            }
            if opcode.isControl {
                guard fin, length <= 125 else {
                    throw WebSocketViolation(code: WebSocketCloseCode.protocolError, reason: "bad control frame")
                }
            }
            guard length <= maxFrameSize else {
                throw WebSocketViolation(code: WebSocketCloseCode.messageTooBig, reason: "frame over \(maxFrameSize) bytes")
            }
            let maskLength = masked ? 4 : 0
            guard available >= header + maskLength + length else { return nil }
            var payload = Array(buffer[(start + header + maskLength)..<(start + header + maskLength + length)])
            if masked {
                let key = Array(buffer[(start + header)..<(start + header + 4)])
                for i in 0..<payload.count { payload[i] ^= key[i & 3] }
            }
            start += header + maskLength + length

            switch opcode {
            case .ping: return .ping(payload)
            case .pong: return .pong(payload)
            case .close:
                let (code, reason) = try closeFrame(payload)
                return .close(code: code, reason: reason)
            case .text, .binary:
                guard fragments == nil else {
                    throw WebSocketViolation(code: WebSocketCloseCode.protocolError, reason: "new message inside a fragmented one")
                }
                if fin { return try complete(opcode, payload) }
                fragments = (opcode, payload)
            case .continuation:
                guard var pending = fragments else {
                    throw WebSocketViolation(code: WebSocketCloseCode.protocolError, reason: "continuation without a message")
                }
                pending.data += payload
                guard pending.data.count <= maxMessageSize else {
                    throw WebSocketViolation(code: WebSocketCloseCode.messageTooBig, reason: "message over \(maxMessageSize) bytes")
                }
                if fin {
                    fragments = nil
                    return try complete(pending.opcode, pending.data)
                }
                fragments = pending
            }
        }
    }

    private func complete(_ opcode: WebSocketOpcode, _ data: [UInt8]) throws(WebSocketViolation) -> WebSocketMessage {
        guard data.count <= maxMessageSize else {
            throw WebSocketViolation(code: WebSocketCloseCode.messageTooBig, reason: "message over \(maxMessageSize) bytes")
        }
        if opcode == .binary { return .binary(data) }
        guard let text = String(validating: data, as: UTF8.self) else {
            throw WebSocketViolation(code: WebSocketCloseCode.invalidPayload, reason: "text is not UTF-8")
        }
        return .text(text)
    }

    private func closeFrame(_ payload: [UInt8]) throws(WebSocketViolation) -> (code: UInt16, reason: String) {
        if payload.isEmpty { return (WebSocketCloseCode.noStatus, "") }
        guard payload.count >= 2 else { throw WebSocketViolation(code: WebSocketCloseCode.protocolError, reason: "bad close frame") }
        let code = UInt16(payload[0]) << 8 | UInt16(payload[1])
        guard WebSocketCloseCode.isValid(code) else {
            throw WebSocketViolation(code: WebSocketCloseCode.protocolError, reason: "invalid close code \(code)")
        }
        guard let reason = String(validating: payload[2...], as: UTF8.self) else {
            throw WebSocketViolation(code: WebSocketCloseCode.invalidPayload, reason: "close reason is not UTF-8")
        }
        return (code, reason)
    }
}
