import EventCatalog
import Foundation
import HTTPServer
import Synchronization

/// The daemon's state: the operations it follows, what each has counted (by the workflow
/// catalog's ``WorkflowProgress``, the boundary's own rule), the CLIs waiting on them, and
/// the WebSocket requests the boundary link must send.
///
/// The boundary's status messages are not trusted: a boundary restarted while an operation
/// was pending never saw its starting events, so it can only say `pending` and then
/// `timed_out`. The daemon resolves each operation from the events it counted itself,
/// across reconnects and its own restarts (the events are in the store).
public final class DaemonCore: Sendable {
    /// What a CLI waiting on an operation is told, as the line to send it.
    public enum WaitUpdate: Sendable, Equatable {
        /// An event of the operation: the boundary's message (one line of JSON).
        case event(String)
        /// The outcome: `{"type":"operation","operation_id","status"}`.
        case outcome(String)
    }

    public typealias Waiter = @Sendable (WaitUpdate) -> Void
    public typealias Follower = @Sendable (OperationRecord) -> Void

    /// The link to the boundary, as `stega daemon status` shows it.
    public struct LinkState: Sendable, Equatable {
        public var connected = false
        public var since = Date()
        /// Why the last attempt failed.
        public var error: String?
    }

    private struct Tracked {
        var record: OperationRecord
        var progress: WorkflowProgress
        var deadline: Double
    }

    private struct State {
        var pending: [String: Tracked] = [:]
        /// Operations subscribed on the boundary's WebSocket now.
        var subscribed: Set<String> = []
        /// WebSocket messages for the link to send.
        var outgoing: [String] = []
        var waiters: [String: [UUID: Waiter]] = [:]
        var followers: [UUID: Follower] = [:]
        var link = LinkState(since: Date())
    }

    public let store: OperationsStore
    /// How long an operation may stay pending before it is `timed_out` (the boundary keeps
    /// what it saw for an hour: past that, no replay can help).
    public let operationTimeout: Double
    /// Operations one WebSocket may follow at once (the boundary's limit per client); more
    /// wait, oldest first, for a slot.
    public let maxSubscriptions: Int
    private let state = Mutex(State())
    public let started = Date()

    public init(store: OperationsStore, operationTimeout: Double = 3600, maxSubscriptions: Int = 1000) throws {
        self.store = store
        self.operationTimeout = operationTimeout
        self.maxSubscriptions = maxSubscriptions
        // Pick up what a previous run left pending, its counts rebuilt from the stored events.
        let pending = try store.pending()
        state.withLock { state in
            for (record, events) in pending {
                var progress = WorkflowProgress()
                for event in events { progress.count(eventId: event.eventId, routingKey: event.routingKey) }
                state.pending[record.operationId] = Tracked(record: record, progress: progress,
                                                            deadline: record.submitted + operationTimeout)
            }
        }
    }

    // MARK: - The CLI's requests

    /// Follows operation `id` (submitted by `command` at `submitted`); a known one keeps its
    /// record. Returns the record as stored.
    @discardableResult
    public func register(_ id: String, command: String, submitted: Double = Date().timeIntervalSince1970) throws -> OperationRecord {
        let key = id.lowercased()
        guard UUID(uuidString: key) != nil else { throw DaemonError("operation must be a UUID, got \(id)") }
        return try state.withLock { state in
            let record = try store.register(OperationRecord(operationId: key, command: command, submitted: submitted))
            guard record.status == "pending" else { return record }
            if state.pending[key] == nil {
                state.pending[key] = Tracked(record: record, progress: WorkflowProgress(),
                                             deadline: record.submitted + operationTimeout)
            } else {
                state.pending[key]?.record.command = record.command
            }
            subscribeMore(&state)
            return record
        }
    }

    /// Calls `waiter` with every event of operation `id` counted so far and then as they
    /// come, and with its outcome (at once for one resolved already). An operation the
    /// daemon does not know is followed from now on (command `-`). Returns a token for
    /// ``stopWaiting(_:token:)``.
    public func wait(_ id: String, waiter: @escaping Waiter) throws -> UUID {
        let key = id.lowercased()
        let token = UUID()
        try register(key, command: "-")
        // Registered first and replayed under the lock, so no event falls between the
        // stored ones and the live ones.
        let replay = try state.withLock { state -> (events: [StoredEvent], outcome: OperationRecord?) in
            guard let (record, events) = try store.operation(key) else { throw DaemonError("operation \(key) vanished") }
            if record.status == "pending" { state.waiters[key, default: [:]][token] = waiter }
            return (events, record.status == "pending" ? nil : record)
        }
        for event in replay.events { waiter(.event(BoundaryMessage.oneLine(event.message))) }
        if let record = replay.outcome { waiter(.outcome(Self.outcomeLine(record))) }
        return token
    }

    public func stopWaiting(_ id: String, token: UUID) {
        state.withLock { state in
            state.waiters[id.lowercased()]?[token] = nil
            if state.waiters[id.lowercased()]?.isEmpty == true { state.waiters[id.lowercased()] = nil }
        }
    }

    /// Calls `follower` with each operation as it resolves.
    public func follow(_ follower: @escaping Follower) -> UUID {
        let token = UUID()
        state.withLock { $0.followers[token] = follower }
        return token
    }

    public func stopFollowing(_ token: UUID) {
        _ = state.withLock { $0.followers.removeValue(forKey: token) }
    }

    /// The link's state and the number of operations pending.
    public var status: (link: LinkState, pending: Int, subscribed: Int) {
        state.withLock { ($0.link, $0.pending.count, $0.subscribed.count) }
    }

    // MARK: - The boundary link

    /// The link connected: the subscriptions to send first (every pending operation, up to
    /// the limit). The boundary replays what it kept of each, so nothing seen while the
    /// link was down is missed, and what was counted already counts once.
    public func connected() -> [String] {
        state.withLock { state in
            state.link = LinkState(connected: true, since: Date(), error: nil)
            state.subscribed = []
            state.outgoing = []
            subscribeMore(&state)
            defer { state.outgoing = [] }
            return state.outgoing
        }
    }

    /// The link is down (or never came up): `error` says why.
    public func disconnected(_ error: String) {
        state.withLock { state in
            state.subscribed = []
            state.outgoing = []
            // `since`: when it went down (or the daemon started, if it never came up).
            state.link = LinkState(connected: false, since: state.link.connected ? Date() : state.link.since, error: error)
        }
    }

    /// The WebSocket messages to send now.
    public func takeOutgoing() -> [String] {
        state.withLock { state in
            defer { state.outgoing = [] }
            return state.outgoing
        }
    }

    /// Handles one message from the boundary. Events of an operation followed are counted
    /// and stored; anything else (acknowledgements, the boundary's own verdicts, errors) is
    /// returned for the log when worth noting.
    @discardableResult
    public func received(_ text: String, now: Double = Date().timeIntervalSince1970) -> String? {
        switch BoundaryMessage.parse(text) {
        case .success(.event(let operation, let eventId, let routingKey)):
            return count(eventId: eventId, routingKey: routingKey, message: BoundaryMessage.oneLine(text), for: operation, now: now)
        case .success(.refused(let reason)):
            return "the boundary refused a request: \(reason)"
        case .success(.ignored):
            return nil
        case .failure(let error):
            return error.description
        }
    }

    /// Marks operations pending past their deadline `timed_out`.
    public func sweep(now: Double = Date().timeIntervalSince1970) {
        let told = state.withLock { state -> [() -> Void] in
            let overdue = state.pending.values.filter { $0.deadline <= now }.map(\.record.operationId)
            return overdue.flatMap { id -> [() -> Void] in
                try? store.resolve(id, status: "timed_out", at: now)
                return resolve(&state, id, status: "timed_out", now: now)
            }
        }
        told.forEach { $0() }
    }

    /// Counts an event for operation `id`, stores it, and tells the waiters (and, when it
    /// decides the outcome, the followers). All under the lock but the telling, so a CLI
    /// that starts waiting reads the store and joins the waiters between two events, never
    /// in the middle of one.
    private func count(eventId: String, routingKey: String, message: String, for id: String, now: Double) -> String? {
        var problem: String?
        let told = state.withLock { state -> [() -> Void] in
            guard var tracked = state.pending[id], tracked.progress.count(eventId: eventId, routingKey: routingKey) else {
                return []
            }
            tracked.record.events = tracked.progress.events
            if let result = tracked.progress.outcome {
                tracked.record.status = result.rawValue
                tracked.record.resolvedAt = now
            }
            do {
                try store.add(event: eventId, routingKey: routingKey, message: message, to: id, status: tracked.record.status,
                              events: tracked.record.events, resolvedAt: tracked.record.resolvedAt)
            } catch {
                // Not counted: the boundary replays it on the next subscription.
                problem = "cannot store event \(eventId) of \(id): \(error)"
                return []
            }
            state.pending[id] = tracked
            let waiters = Array((state.waiters[id] ?? [:]).values)
            var told: [() -> Void] = [{ waiters.forEach { $0(.event(message)) } }]
            if tracked.record.status != "pending" { told += resolve(&state, id, status: tracked.record.status, now: now) }
            return told
        }
        told.forEach { $0() }
        return problem
    }

    /// Ends following `id` with `status` (stored already): its subscription goes to the next
    /// operation waiting for one; returns the telling of its waiters and the followers.
    private func resolve(_ state: inout State, _ id: String, status: String, now: Double) -> [() -> Void] {
        guard var tracked = state.pending.removeValue(forKey: id) else { return [] }
        tracked.record.status = status
        tracked.record.resolvedAt = tracked.record.resolvedAt ?? now
        if state.subscribed.remove(id) != nil, state.link.connected {
            state.outgoing.append(#"{"action":"unsubscribe","operation":"\#(id)"}"#)
        }
        subscribeMore(&state)
        let waiters = Array((state.waiters.removeValue(forKey: id) ?? [:]).values)
        let followers = Array(state.followers.values)
        let record = tracked.record
        let line = Self.outcomeLine(record)
        return [{
            waiters.forEach { $0(.outcome(line)) }
            followers.forEach { $0(record) }
        }]
    }

    /// Queues subscriptions for pending operations not subscribed yet, oldest first, up to
    /// the limit; nothing while the link is down (``connected()`` subscribes them all).
    private func subscribeMore(_ state: inout State) {
        guard state.link.connected, state.subscribed.count < maxSubscriptions else { return }
        let waiting = state.pending.values.filter { !state.subscribed.contains($0.record.operationId) }
            .sorted { $0.record.submitted < $1.record.submitted }
        for tracked in waiting.prefix(maxSubscriptions - state.subscribed.count) {
            state.subscribed.insert(tracked.record.operationId)
            state.outgoing.append(#"{"action":"subscribe","operation":"\#(tracked.record.operationId)"}"#)
        }
    }

    static func outcomeLine(_ record: OperationRecord) -> String {
        #"{"type":"operation","operation_id":"\#(record.operationId)","status":"\#(record.status)"}"#
    }
}
