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
            timestamp = OperationTracker.rfc3339(envelope.timestamp)
        }
    }

    public let operationId: String
    public internal(set) var status: Status
    public internal(set) var events: [Event]
    let firstSeen: Date
    var deadline: Date
    var started = 0
    var resolved = 0

    enum CodingKeys: String, CodingKey {
        case status, events
        case operationId = "operation_id"
    }
}

/// Tracks operations by correlation id from the events the boundary consumes; keeps recent
/// outcomes (at most `capacity` operations, none older than `maxAge`) so a client that asks
/// after the end still gets the result.
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
        var subscribers: [String: [UUID: Subscriber]] = [:]
    }

    private let state = Mutex(State())
    /// How long an operation may stay pending before it becomes `timed_out`.
    public let timeout: TimeInterval
    public let capacity: Int
    public let maxAge: TimeInterval
    /// Events kept per operation.
    public static let maxEvents = 1000

    public init(timeout: TimeInterval = 30, capacity: Int = 10_000, maxAge: TimeInterval = 3600) {
        self.timeout = timeout
        self.capacity = capacity
        self.maxAge = maxAge
    }

    /// Records `envelope` under its correlation id and moves the operation's status on.
    public func record(_ envelope: EventEnvelope, now: Date = Date()) {
        guard let id = envelope.correlationId?.lowercased(), !id.isEmpty else { return }
        let event = Operation.Event(envelope)
        let (subscribers, resolved) = state.withLock { state -> ([Subscriber], Operation.Status?) in
            if state.operations[id] == nil {
                state.operations[id] = Operation(operationId: id, status: .pending, events: [], firstSeen: now,
                                                 deadline: now.addingTimeInterval(timeout))
                state.order.append(id)
                evict(&state, now: now)
            }
            var op = state.operations[id]!
            if op.events.count < Self.maxEvents { op.events.append(event) }
            if Workflow.started(by: envelope.routingKey) != nil { op.started += 1 }
            if Workflow.all.contains(where: { $0.resolvedBy == envelope.routingKey }) { op.resolved += 1 }
            let wasPending = op.status == .pending
            if op.status == .pending {
                if Workflow.isFailure(envelope.routingKey) {
                    op.status = .failed
                } else if op.started > 0, op.resolved >= op.started {
                    op.status = .succeeded
                }
            }
            state.operations[id] = op
            let subscribers = Array((state.subscribers[id] ?? [:]).values)
            return (subscribers, wasPending && op.status != .pending ? op.status : nil)
        }
        // Outside the lock: subscribers may call back into the tracker.
        for subscriber in subscribers {
            subscriber(.event(event))
            if let resolved { subscriber(.resolved(resolved)) }
        }
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

    private func evict(_ state: inout State, now: Date) {
        while let oldest = state.order.first,
              state.order.count > capacity
                || (state.operations[oldest].map { now.timeIntervalSince($0.firstSeen) > maxAge } ?? true) {
            state.order.removeFirst()
            state.operations[oldest] = nil
        }
    }

    static func rfc3339(_ date: Date) -> String {
        var seconds = time_t(date.timeIntervalSince1970)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1,
                      Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
    }
}
