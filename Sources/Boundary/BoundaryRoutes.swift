import Foundation
import HTTPServer

/// The boundary's REST API: `GET /operations/{id}`.
public struct BoundaryRoutes: Sendable {
    let tracker: OperationTracker

    public init(tracker: OperationTracker) { self.tracker = tracker }

    public func add(to router: inout Router) {
        router.get("/operations/{id}") { request in
            let id = request.parameters["id"] ?? ""
            guard UUID(uuidString: id) != nil else {
                throw HTTPError(400, "invalid_operation_id", "operation id must be a UUID, got \(id)")
            }
            guard let operation = tracker.operation(id) else {
                throw HTTPError(404, "unknown_operation", "no event has been seen for operation \(id)")
            }
            return try .json(operation)
        }
    }
}
