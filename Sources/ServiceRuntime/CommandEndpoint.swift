import HTTPServer
import MessageBus

/// What every write endpoint does once its command is built: a new operation, the command
/// on the bus (state and events in one transaction), and `202 {"operation_id"}` with
/// `Location: /operations/<id>`. A command that cannot be stored is 503 `store_unavailable`;
/// a bus error (no handler, events raised and not stored or not declared) is a defect, not
/// a store that may come back: it goes to the router as a logged 500.
public enum CommandEndpoint {
    public static func accept<C: Command>(_ command: C, from request: HTTPRequest, bus: MessageBus) async throws -> HTTPResponse {
        let metadata = MessageMetadata.newOperation(traceparent: request.header("traceparent"))
        do {
            try await bus.send(command, metadata: metadata)
        } catch let error as BusError {
            throw error
        } catch {
            throw HTTPError(503, "store_unavailable", "the write could not be stored; try again")
        }
        // The id is a UUID's text: nothing in it to escape (and no JSONEncoder on every write).
        return .json(bytes: Array("{\"operation_id\":\"\(metadata.correlationId)\"}".utf8), status: 202,
                     headers: ["Location": "/operations/\(metadata.correlationId)"])
    }
}
