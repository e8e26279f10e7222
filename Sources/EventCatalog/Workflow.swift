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

/// How far one operation has come, counted from its events by the workflow catalog: the
/// rule the boundary's tracker and the CLI's daemon both apply (one implementation, so the
/// two cannot disagree on what "done" means).
///
/// An event id counts once (a redelivery, or the boundary replaying what it saw to a
/// client that subscribes again). The operation succeeds once it has seen at least one
/// starting event and as many resolving events as starting ones; it fails on the first
/// `operation_failed`. The outcome, once reached, does not change.
public struct WorkflowProgress: Sendable, Equatable {
    public enum Outcome: String, Sendable { case succeeded, failed }

    /// Starting events counted (`prices_recorded`, `window_added`).
    public private(set) var started = 0
    /// Resolving events counted (`correlations_updated`).
    public private(set) var resolved = 0
    /// The outcome, once the events decide it.
    public private(set) var outcome: Outcome?
    /// Every event id counted.
    public private(set) var seen: Set<String> = []

    public init() {}

    /// Counts event `eventId` (routing key `routingKey`); false when it was counted already.
    @discardableResult
    public mutating func count(eventId: String, routingKey: String) -> Bool {
        guard seen.insert(eventId).inserted else { return false }
        if Workflow.started(by: routingKey) != nil { started += 1 }
        if Workflow.all.contains(where: { $0.resolvedBy == routingKey }) { resolved += 1 }
        if outcome == nil {
            if Workflow.isFailure(routingKey) {
                outcome = .failed
            } else if started > 0, resolved >= started {
                outcome = .succeeded
            }
        }
        return true
    }

    /// Distinct events counted.
    public var events: Int { seen.count }
}
