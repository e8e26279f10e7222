/// Which event resolves each command: what the boundary needs to tell a client that its
/// operation is done.
///
/// An operation succeeds when it has seen as many resolving events as starting events (a
/// write of three symbols raises three `prices_recorded`, and ends with three
/// `correlations_updated`); it fails on any `<service>.events.operation_failed`.
public struct Workflow: Sendable, Equatable {
    /// The command's name (`record_prices`).
    public let name: String
    /// The endpoint that starts it.
    public let endpoint: String
    /// The event that the command raises (one or more times).
    public let startedBy: String
    /// The event that ends the workflow, once per starting event.
    public let resolvedBy: String

    public static let all: [Workflow] = [
        Workflow(name: "record_prices", endpoint: "POST /prices (returns-api)",
                 startedBy: PricesRecorded.routingKey, resolvedBy: CorrelationsUpdated.routingKey),
        Workflow(name: "add_window", endpoint: "POST /windows (correlations-api)",
                 startedBy: WindowAdded.routingKey, resolvedBy: CorrelationsUpdated.routingKey),
    ]

    /// The workflow an event starts, if any.
    public static func started(by routingKey: String) -> Workflow? { all.first { $0.startedBy == routingKey } }

    /// Whether `routingKey` reports a failed operation.
    public static func isFailure(_ routingKey: String) -> Bool { RoutingKey.eventName(of: routingKey) == "operation_failed" }
}
