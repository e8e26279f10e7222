// libFuzzer target: what the CLI daemon reads — a CLI's request line on its unix socket
// (DaemonRequest) and a message of the boundary's WebSocket (BoundaryMessage, then counted
// by the workflow catalog's WorkflowProgress as the daemon does). The first byte picks which.
// Whatever the bytes: a parse ends in a value or a reason, a parsed request names a lowercase
// UUID and a valid command, an event counts once, and a message put on one line has no break.
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    guard let first = bytes.first else { return 0 }
    let text = String(decoding: bytes.dropFirst(), as: UTF8.self)
    if first & 1 == 0 {
        switch DaemonRequest.parse(text) {
        case .success(.register(let operation, let command, let submitted)), .success(.wait(let operation, let command, let submitted)):
            precondition(UUID(uuidString: operation) != nil && operation == operation.lowercased())
            precondition(command == "-" || DaemonRequest.isCommandName(command))
            precondition(submitted.map { $0.isFinite && $0 > 0 } ?? true)
        case .success, .failure: break
        }
    } else {
        let line = BoundaryMessage.oneLine(text)
        precondition(!line.utf8.contains(10) && !line.utf8.contains(13) && line.utf8.count == text.utf8.count)
        if case .success(.event(let operation, let eventId, let routingKey)) = BoundaryMessage.parse(text) {
            precondition(UUID(uuidString: operation) != nil && operation == operation.lowercased())
            var progress = WorkflowProgress()
            precondition(progress.count(eventId: eventId, routingKey: routingKey))
            let outcome = progress.outcome
            precondition(!progress.count(eventId: eventId, routingKey: routingKey) && progress.outcome == outcome)
            precondition(progress.events == 1)
        }
    }
    return 0
}
