import EventCatalog
import Foundation
import Handoff
import Logging
import Metrics
import MessageBus
import Synchronization

/// Publishes events on one long-lived connection, owned by a dedicated thread.
///
/// Every call of ``publish(_:)`` queues its envelopes; the thread publishes them at once and
/// (with confirms) returns to the caller when the broker has acked all of its messages. Calls
/// are pipelined: a call's messages go out while earlier ones still wait for their acks (the
/// broker syncs persistent messages to disk before it acks them, a few milliseconds), and
/// acks with `multiple` settle many calls at once; callers are resumed in publish order. A
/// failure (connection lost, a nack, no ack within 30 s) fails every call not yet confirmed
/// and every call queued, and the connection is opened again on the next call.
///
/// ```swift
/// let publisher = AMQPPublisher(settings: settings, confirms: true, logger: logger)
/// try await publisher.publish([envelope])
/// publisher.shutdown()
/// ```
public final class AMQPPublisher: EventPublisher, Sendable {
    private struct Job {
        let envelopes: [EventEnvelope]
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var jobs: [Job] = []
        var stopped = false
    }

    private let settings: AMQPSettings
    private let queueType: QueueType
    /// Which broker node to connect to (the next one after a lost connection).
    private let nodes: NodeCursor
    private let confirms: Bool
    private let persistent: Bool
    private let logger: Logger
    private let state = Mutex(State())
    private let wakeup = Wakeup()
    private let connectedFlag = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)
    private let warnedKeys = Mutex<Set<String>>([])
    private let unroutable = Atomic<Int>(0)
    private let port = Mutex<Int?>(nil)
    private let connections = Atomic<Int>(0)

    /// The local TCP port of the current connection (to find it on the broker in tests).
    var localPort: Int? { port.withLock { $0 } }
    /// The index in `settings.nodes` of the node of the current (or last) connection.
    var node: Int { nodes.node }

    /// - Parameters:
    ///   - confirms: publisher confirms (`confirm.select`): `publish` returns after the broker's ack.
    ///   - persistent: `delivery_mode` 2.
    ///   - queueType: what `events.unroutable` is declared as (`STEGA_QUEUE_TYPE`): a classic
    ///     queue lives on one node, and while that node is down no publisher could declare it.
    public init(settings: AMQPSettings, confirms: Bool = true, persistent: Bool = true,
                queueType: QueueType = .classic, logger: Logger = Logger(label: "stega.amqp.publisher")) {
        self.settings = settings
        self.queueType = queueType
        nodes = NodeCursor(nodes: settings.nodes.count)
        self.confirms = confirms
        self.persistent = persistent
        self.logger = logger
        let thread = Thread { [self] in self.loop() }
        thread.name = "amqp-publisher"
        thread.start()
    }

    /// Events the broker returned as unroutable since start.
    public var unroutableCount: Int { unroutable.load(ordering: .relaxed) }

    /// Whether the publisher's connection is open.
    public var isConnected: Bool { connectedFlag.load(ordering: .relaxed) }

    public func publish(_ envelopes: [EventEnvelope]) async throws {
        guard !envelopes.isEmpty else { return }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let accepted = state.withLock { state -> Bool in
                guard !state.stopped else { return false }
                state.jobs.append(Job(envelopes: envelopes, continuation: continuation))
                return true
            }
            if accepted {
                wakeup.signal()
            } else {
                continuation.resume(throwing: AMQPError(.notConnected, "publisher is shut down"))
            }
        }
    }

    /// Stops the thread after the queued batches; later publishes fail.
    public func shutdown() {
        state.withLock { $0.stopped = true }
        wakeup.signal()
    }

    /// Waits (blocking) until the thread has closed its connection.
    public func waitUntilFinished(timeout: Double = 10) {
        let deadline = Date().addingTimeInterval(timeout)
        while !finished.load(ordering: .acquiring), Date() < deadline { usleep(5_000) }
    }

    // MARK: - The publisher thread

    /// `events.unroutable`'s declaration: the latest 100,000 kept.
    static func unroutableArguments(_ type: QueueType) -> [String: HeaderValue] {
        type.arguments.merging(["x-max-length": .int(100_000), "x-overflow": .string("drop-head")]) { _, new in new }
    }

    /// Where returned (unroutable) events are kept, in durable mode.
    public static let unroutableQueue = "events.unroutable"

    private final class Session {
        let connection: RabbitMQConnection
        var nextTag: UInt64 = 1
        /// Every delivery tag up to this one is acked; single acks beyond it wait in `singles`.
        var confirmed: UInt64 = 0
        var singles = Set<UInt64>()
        /// Jobs published and not yet confirmed, oldest first, with the last tag each waits for.
        var inFlight: [(job: Job, lastTag: UInt64, since: Date)] = []
        init(_ connection: RabbitMQConnection) { self.connection = connection }

        func acked(_ tag: UInt64, multiple: Bool) {
            if multiple { confirmed = max(confirmed, tag) } else if tag > confirmed { singles.insert(tag) }
            while singles.remove(confirmed + 1) != nil { confirmed += 1 }
        }
    }

    private func loop() {
        var session: Session?
        var backoff = Backoff(base: 0.25, cap: 5)
        var nextAttempt = Date()
        while true {
            let (jobs, stopped) = state.withLock { state in
                defer { state.jobs.removeAll() }
                return (state.jobs, state.stopped)
            }
            if jobs.isEmpty, session?.inFlight.isEmpty ?? true {
                if stopped { break }
                guard let open = session else {
                    // Connect ahead of the first publish, so readiness reflects the broker.
                    if Date() >= nextAttempt {
                        do {
                            session = Session(try connect())
                            backoff.reset()
                        } catch {
                            let delay = backoff.next()
                            nextAttempt = Date().addingTimeInterval(delay)
                            if backoff.attempt == 1 || backoff.attempt % 10 == 0 {
                                logger.warning("publisher cannot connect; retrying", metadata: [
                                    "error": "\(error)", "retry_in_s": "\(String(format: "%.2f", delay))"])
                            }
                        }
                    }
                    wakeup.wait(socket: nil, timeout: max(0.01, min(1, nextAttempt.timeIntervalSinceNow)))
                    continue
                }
                if !open.connection.hasBufferedInput {
                    wakeup.wait(socket: open.connection.socketFD, timeout: 1)
                }
                do {
                    // Also lets rabbitmq-c send and check heartbeats while idle.
                    try park(try readFrames(on: open), on: open)
                } catch {
                    logger.warning("publisher connection lost", metadata: ["error": "\(error)"])
                    session = nil
                    connectedFlag.store(false, ordering: .relaxed)
                }
                continue
            }
            // Jobs of this turn not yet published, and published ones not yet resumed.
            var waiting = jobs[...]
            var sent: [Job] = []
            do {
                if !waiting.isEmpty {
                    if session == nil { session = Session(try connect()) }
                    guard let open = session else { continue }
                    // Published at once, even while earlier jobs wait for their confirms: a
                    // job does not wait for the broker's sync of the one before it.
                    // Batched: the turn's messages leave together once all are written.
                    try open.connection.batched {
                        while let job = waiting.first {
                            // Each message is built as it is sent, not all of a job at once (memory).
                            try publish(job.envelopes.lazy.map { [persistent] in AMQPMessage($0, persistent: persistent) },
                                        exchange: settings.exchange, mandatory: true, on: open)
                            waiting.removeFirst()
                            if confirms {
                                open.inFlight.append((job, open.nextTag - 1, Date()))
                            } else {
                                sent.append(job)
                            }
                        }
                    }
                    // The relay goes on here (its next batch is queued before this thread looks again).
                    let done = sent
                    sent = []
                    if !done.isEmpty { InlineExecutor.inline { done.forEach { $0.continuation.resume() } } }
                }
                if let open = session, !open.inFlight.isEmpty {
                    try settleConfirms(on: open)
                }
            } catch {
                logger.warning("publish failed", metadata: ["error": "\(error)"])
                let unconfirmed = session?.inFlight.map(\.job) ?? []
                session?.connection.abandon()
                session = nil
                connectedFlag.store(false, ordering: .relaxed)
                // Everything not confirmed fails, and so does what was queued meanwhile, so
                // nothing published later overtakes what failed (the relay sends it again).
                let queued = state.withLock { state in defer { state.jobs.removeAll() }; return state.jobs }
                (unconfirmed + sent + Array(waiting) + queued).forEach { $0.continuation.resume(throwing: error) }
            }
        }
        session?.connection.close()
        session = nil
        connectedFlag.store(false, ordering: .relaxed)
        finished.store(true, ordering: .releasing)
    }

    /// Reads what the broker sent (without waiting when new jobs are queued), parks returned
    /// messages, and resumes the jobs whose messages are all confirmed, oldest first.
    private func settleConfirms(on open: Session) throws {
        let queued = state.withLock { !$0.jobs.isEmpty }
        if !queued, !open.connection.hasBufferedInput {
            // New jobs wake this too (eventfd): they are published before the confirms come.
            wakeup.wait(socket: open.connection.socketFD, timeout: 1)
        }
        let returned = try readFrames(on: open)
        if !returned.isEmpty {
            // A message comes back before its ack: the job it belongs to is still in flight,
            // and now completes only once the parked copies are confirmed too.
            let parkedUpTo = open.nextTag
            try park(returned, on: open)
            if open.nextTag > parkedUpTo {
                for i in open.inFlight.indices { open.inFlight[i].lastTag = max(open.inFlight[i].lastTag, open.nextTag - 1) }
            }
        }
        var done: [Job] = []
        var count = 0
        while let first = open.inFlight.first, first.lastTag <= open.confirmed {
            open.inFlight.removeFirst()
            done.append(first.job)
            count += first.job.envelopes.count
        }
        if !done.isEmpty {
            Counter(label: "events_confirmed_total").increment(by: count)
            // The relay goes on here (its next batch is queued before this thread looks again).
            InlineExecutor.inline { done.forEach { $0.continuation.resume() } }
        }
        if let oldest = open.inFlight.first, Date().timeIntervalSince(oldest.since) > 30 {
            throw AMQPError(.confirmTimeout, "no confirm for delivery tag \(open.confirmed + 1)")
        }
    }

    /// Publishes `messages` (their delivery tags are the session's next ones).
    private func publish<Messages: Collection<AMQPMessage>>(_ messages: Messages, exchange: String, routingKey: String? = nil,
                                                            mandatory: Bool, on open: Session) throws {
        for message in messages {
            try open.connection.publish(message, exchange: exchange, routingKey: routingKey, mandatory: mandatory)
            if confirms { open.nextTag += 1 }
        }
    }

    /// Keeps events that no queue took in `events.unroutable` (durable mode), so they are not
    /// lost silently: `<service>-worker replay-unroutable` sends them to the exchange again.
    private func park(_ returned: [AMQPMessage], on open: Session) throws {
        guard !returned.isEmpty else { return }
        for message in returned {
            // The first of each routing key at warning, the rest at debug: an event nobody
            // subscribes to yet is normal in pub/sub, a flood of identical warnings is not.
            let first = warnedKeys.withLock { $0.insert(message.routingKey).inserted }
            logger.log(level: first && persistent ? .warning : .debug,
                       "event unroutable: no queue is bound to its routing key", metadata: [
                "amqp.routing_key": "\(message.routingKey)", "bus.event_id": "\(message.messageId ?? "")",
                "amqp.queue": "\(persistent ? Self.unroutableQueue : "(dropped: transient mode)")",
            ])
        }
        unroutable.add(returned.count, ordering: .relaxed)
        for message in returned {
            Counter(label: "events_unroutable_total", dimensions: [("routing_key", message.routingKey)]).increment()
        }
        guard persistent else { return }
        let parked = returned.map { message -> AMQPMessage in
            var copy = message
            copy.headers[AMQPMessage.Header.routingKey] = .string(message.originalRoutingKey)
            return copy
        }
        // Confirmed with the job the returned messages belong to (see `settleConfirms`).
        try publish(parked, exchange: "", routingKey: Self.unroutableQueue, mandatory: false, on: open)
    }

    private func connect() throws -> RabbitMQConnection {
        let (connection, node) = try RabbitMQConnection.connect(settings: settings, order: nodes.order)
        nodes.connected(to: node)
        try connection.declareExchange(settings.exchange, type: settings.exchangeType, durable: true)
        if persistent {
            _ = try connection.declareQueue(Self.unroutableQueue, durable: true, exclusive: false, autoDelete: false,
                                            arguments: Self.unroutableArguments(queueType))
        }
        if confirms { try connection.selectConfirms() }
        port.withLock { $0 = connection.localPort }
        if connections.add(1, ordering: .relaxed).newValue > 1 {
            Counter(label: "amqp_reconnects_total", dimensions: [("role", "publisher")]).increment()
        }
        connectedFlag.store(true, ordering: .relaxed)
        logger.info("publisher connected", metadata: ["amqp.url": "\(settings.nodes[node])"])
        return connection
    }

    /// Reads what the broker sent without waiting: acks are noted in the session (whenever
    /// they come, idle or not), a nack throws, returned messages are handed back — at most
    /// `maxReturned` at a time (the rest is read on the next call): a flood of unroutable
    /// events is parked in pieces instead of being held whole (1.3 MB of copies at once,
    /// measured with 50,000 events nobody subscribed to). Stopping after a returned message
    /// leaves no ack unread before it: the broker sends a message's return before its ack.
    private func readFrames(on open: Session, maxReturned: Int = 256) throws -> [AMQPMessage] {
        var returned: [AMQPMessage] = []
        while returned.count < maxReturned, let frame = try open.connection.nextFrame(timeout: 0) {
            switch frame {
            case .ack(let tag, let multiple):
                open.acked(tag, multiple: multiple)
            case .nack(let tag, _):
                throw AMQPError(.publishNacked, "broker nacked delivery tag \(tag)")
            case .returned(let message, _):
                returned.append(message)
            default:
                break
            }
        }
        return returned
    }
}
