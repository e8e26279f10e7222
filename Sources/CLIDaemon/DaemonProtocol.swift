import Foundation
#if canImport(HTTPServer)  // scripts/fuzz.sh compiles this file with JSONValue's in one module
import HTTPServer
#endif

/// A CLI's request to the daemon: one JSON object on one line (the README lists them).
enum DaemonRequest: Equatable, Sendable {
    case status
    /// Follow an operation the CLI submitted; answered `{"type":"registered"}`.
    case register(operation: String, command: String, submitted: Double?)
    /// Follow it (registering it first) and stream its events, then its outcome.
    case wait(operation: String, command: String, submitted: Double?)
    /// Stream every outcome as it arrives.
    case follow

    /// Parses one line; the error is what the CLI is told.
    static func parse(_ line: String) -> Result<DaemonRequest, DaemonError> {
        guard let fields = try? JSONValue.parseObject(Array(line.utf8)), case .string(let request)? = fields["request"] else {
            return .failure(DaemonError(#"expected a JSON object with "request": status, register, wait or follow"#))
        }
        switch request {
        case "status": return .success(.status)
        case "follow": return .success(.follow)
        case "register", "wait":
            guard case .string(let id)? = fields["operation_id"], let uuid = UUID(uuidString: id) else {
                return .failure(DaemonError("operation_id must be a UUID"))
            }
            var command = "-"
            switch fields["command"] {
            case nil, .null?: break
            case .string(let given)? where isCommandName(given): command = given
            default: return .failure(DaemonError("command must be 1 to 64 of a-z, 0-9, _ and -"))
            }
            var submitted: Double?
            if case .number(let given, _)? = fields["submitted"], given.isFinite, given > 0, given < 253_402_300_800 {
                submitted = given
            }
            let operation = uuid.uuidString.lowercased()
            return .success(request == "wait" ? .wait(operation: operation, command: command, submitted: submitted)
                                              : .register(operation: operation, command: command, submitted: submitted))
        default:
            return .failure(DaemonError("unknown request \(request.prefix(64)): expected status, register, wait or follow"))
        }
    }

    static func isCommandName(_ text: String) -> Bool {
        (1...64).contains(text.utf8.count)
            && text.utf8.allSatisfy { (97...122).contains($0) || (48...57).contains($0) || $0 == 95 || $0 == 45 }
    }
}

/// What the daemon reads from the boundary's WebSocket.
enum BoundaryMessage: Equatable, Sendable {
    /// An event of an operation (the daemon follows operations, so every event has one).
    case event(operation: String, eventId: String, routingKey: String)
    /// The boundary refused a request.
    case refused(String)
    /// An acknowledgement or the boundary's own verdict: the daemon decides from the events.
    case ignored

    static func parse(_ text: String) -> Result<BoundaryMessage, DaemonError> {
        guard let fields = try? JSONValue.parseObject(Array(text.utf8)), case .string(let type)? = fields["type"] else {
            return .failure(DaemonError("not a JSON object with a type: \(text.prefix(200))"))
        }
        switch type {
        case "event":
            guard case .string(let operation)? = fields["correlation_id"], let uuid = UUID(uuidString: operation),
                  case .string(let eventId)? = fields["event_id"], !eventId.isEmpty, eventId.utf8.count <= 128,
                  case .string(let routingKey)? = fields["routing_key"], !routingKey.isEmpty, routingKey.utf8.count <= 255
            else { return .failure(DaemonError("an event without a UUID correlation_id, an event_id or a routing_key")) }
            return .success(.event(operation: uuid.uuidString.lowercased(), eventId: eventId, routingKey: routingKey))
        case "error":
            if case .string(let message)? = fields["message"] { return .success(.refused(String(message.prefix(500)))) }
            return .success(.refused("no reason given"))
        default:
            return .success(.ignored)
        }
    }

    /// `text` on one line: JSON allows line breaks only between tokens, where a space is
    /// the same; the protocol to the CLI is one message per line.
    static func oneLine(_ text: String) -> String {
        guard text.utf8.contains(where: { $0 == 10 || $0 == 13 }) else { return text }
        return String(decoding: text.utf8.map { $0 == 10 || $0 == 13 ? 32 : $0 }, as: UTF8.self)
    }
}
