import EventCatalog
import Foundation
import HTTPServer
import Synchronization

/// What the boundary knows of one operation.
public struct Operation: Sendable, Equatable, Encodable {
    public enum Status: String, Sendable, Encodable { case pending, succeeded, failed, timedOut = "timed_out" }

    /// One event of the operation, as clients see it.
    public struct Event: Sendable, Equatable, Encodable {
        public let routingKey: String
        public let eventId: String
        public let correlationId: String
        public let payload: JSONValue
        public let timestamp: String

        enum CodingKeys: String, CodingKey {
            case payload, timestamp
            case routingKey = "routing_key"
            case eventId = "event_id"
            case correlationId = "correlation_id"
        }

        /// The client's view of `envelope`: its JSON payload and an RFC 3339 timestamp.
        public init(_ envelope: EventEnvelope) {
            routingKey = envelope.routingKey
            eventId = envelope.eventId.lowercaseText
            correlationId = envelope.correlationId?.lowercased() ?? ""
            payload = (try? JSONValue.parse(Array(envelope.body))) ?? .string(String(decoding: envelope.body, as: UTF8.self))
            timestamp = RFC3339.string(envelope.timestamp)
        }
    }

    public let operationId: String
    public internal(set) var status: Status
    public internal(set) var events: [Event]
    let firstSeen: Date
    var deadline: Date
    /// The events counted by the workflow catalog (each event id once).
    var progress = WorkflowProgress()
    /// What the tracker counts against its byte budget for this operation.
    var bytes = 0

    enum CodingKeys: String, CodingKey {
        case status, events
        case operationId = "operation_id"
    }
}

/// Tracks operations by correlation id from the events the boundary consumes; keeps recent
/// outcomes (at most `capacity` operations and `maxBytes` of their events, none older than
/// `maxAge`; the oldest go first) so a client that asks after the end still gets the result.
/// An event seen twice (a redelivery, same event id) counts once.
public final class OperationTracker: Sendable {
    /// What a subscriber is told: an event of the operation, or its outcome.
    public enum Update: Sendable {
        case event(Operation.Event)
        case resolved(Operation.Status)
    }

    public typealias Subscriber = @Sendable (Update) -> Void

    private struct State {
        var operations: [String: Operation] = [:]
        var order: [String] = []  // insertion order, for eviction
        var orderStart = 0        // entries before it are evicted already
        var subscribers: [String: [UUID: Subscriber]] = [:]
        var bytes = 0
    }

    private let state = Mutex(State())
    /// How long an operation may stay pending before it becomes `timed_out`.
    public let timeout: TimeInterval
    public let capacity: Int
    public let maxAge: TimeInterval
    /// Events kept per operation.
    public static let maxEvents = 1000

    /// The bytes of events kept at most (their payloads as parsed, ids and keys, estimated).
    public let maxBytes: Int

    public init(timeout: TimeInterval = 30, capacity: Int = 10_000, maxAge: TimeInterval = 3600,
                maxBytes: Int = 64 << 20) {
        self.timeout = timeout
        self.capacity = capacity
        self.maxAge = maxAge
        self.maxBytes = maxBytes
    }

    /// The bytes counted for the operations kept now.
    public var bytesKept: Int { state.withLock { $0.bytes } }

    /// Records `envelope` under its correlation id and moves the operation's status on;
    /// returns false when its operation already counted this event id (a redelivery). An
    /// event without a correlation id belongs to no operation: nothing is kept, and true.
    @discardableResult
    public func record(_ envelope: EventEnvelope, now: Date = Date()) -> Bool {
        guard let id = envelope.correlationId?.lowercased(), !id.isEmpty else { return true }
        let event = Operation.Event(envelope)
        let cost = 256 + event.payload.footprint + event.routingKey.utf8.count
        let recorded = state.withLock { state -> (subscribers: [Subscriber], resolved: Operation.Status?)? in
            // Taken out of the table while it changes, so its arrays are not copied.
            var op: Operation
            if let known = state.operations.removeValue(forKey: id) {
                op = known
            } else {
                op = Operation(operationId: id, status: .pending, events: [], firstSeen: now,
                               deadline: now.addingTimeInterval(timeout))
                state.order.append(id)
            }
            guard op.progress.count(eventId: event.eventId, routingKey: envelope.routingKey) else {
                state.operations[id] = op
                return nil
            }
            // One operation keeps events up to a quarter of the budget (and ``maxEvents``);
            // past that they are counted toward its status but not kept. The id costs either way.
            let keep = op.events.count < Self.maxEvents && op.bytes + cost <= maxBytes / 4
            let added = keep ? cost : 64
            if keep { op.events.append(event) }
            op.bytes += added
            state.bytes += added
            let wasPending = op.status == .pending
            if wasPending, let outcome = op.progress.outcome {
                op.status = outcome == .failed ? .failed : .succeeded
            }
            state.operations[id] = op
            evict(&state, now: now, keeping: id)
            let subscribers = Array((state.subscribers[id] ?? [:]).values)
            return (subscribers, wasPending && op.status != .pending ? op.status : nil)
        }
        guard let recorded else { return false }
        // Outside the lock: subscribers may call back into the tracker.
        for subscriber in recorded.subscribers {
            subscriber(.event(event))
            if let resolved = recorded.resolved { subscriber(.resolved(resolved)) }
        }
        return true
    }

    /// Calls `subscriber` with every event of operation `id` after the ones in the returned
    /// snapshot, and with its outcome; returns the snapshot (`nil` if the operation was never
    /// seen) and a token for ``unsubscribe(_:token:)``.
    public func subscribe(_ id: String, _ subscriber: @escaping Subscriber) -> (Operation?, UUID) {
        let token = UUID.random()
        let key = id.lowercased()
        let snapshot = state.withLock { state -> Operation? in
            state.subscribers[key, default: [:]][token] = subscriber
            return state.operations[key]
        }
        return (snapshot, token)
    }

    public func unsubscribe(_ id: String, token: UUID) {
        state.withLock { state in
            state.subscribers[id.lowercased()]?[token] = nil
            if state.subscribers[id.lowercased()]?.isEmpty == true { state.subscribers[id.lowercased()] = nil }
        }
    }

    /// The operation `id`, if seen and still kept.
    public func operation(_ id: String, now: Date = Date()) -> Operation? {
        sweep(now: now)
        return state.withLock { $0.operations[id.lowercased()] }
    }

    /// Marks overdue pending operations `timed_out` and drops what is too old.
    public func sweep(now: Date = Date()) {
        let timedOut = state.withLock { state -> [Subscriber] in
            var notify: [Subscriber] = []
            for (id, op) in state.operations where op.status == .pending && op.deadline <= now {
                state.operations[id]?.status = .timedOut
                notify += Array((state.subscribers[id] ?? [:]).values)
            }
            evict(&state, now: now)
            return notify
        }
        timedOut.forEach { $0(.resolved(.timedOut)) }
    }

    /// Drops the oldest operations while there are more than `capacity`, their events hold
    /// more than `maxBytes`, or they are older than `maxAge` — but never `keeping` (the one
    /// an event was just recorded for: it is the newest, or it would have been dropped).
    private func evict(_ state: inout State, now: Date, keeping: String? = nil) {
        while state.orderStart < state.order.count {
            let oldest = state.order[state.orderStart]
            guard let op = state.operations[oldest] else {
                state.orderStart += 1  // evicted already
                continue
            }
            let over = state.order.count - state.orderStart > capacity || state.bytes > maxBytes
                || now.timeIntervalSince(op.firstSeen) > maxAge
            guard over, oldest != keeping else { break }
            state.operations[oldest] = nil
            state.bytes -= op.bytes
            state.orderStart += 1
        }
        // Compact the order list once its evicted head is as long as the rest.
        if state.orderStart > 1024, state.orderStart * 2 > state.order.count {
            state.order.removeFirst(state.orderStart)
            state.orderStart = 0
        }
    }
}
