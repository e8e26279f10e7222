import EventCatalog
import Foundation
import Handoff
import Logging
import Metrics
import MessageBus
import Synchronization

/// Consumes a service's events on one long-lived connection, owned by a dedicated thread.
///
/// Durable mode: queue `<service>.events` (durable), `basic.qos` prefetch, manual ack after
/// the handler returns. A `.retry` is published to the delay queue of its attempt
/// (`<service>.events.retry.<ms>`, whose TTL dead-letters it back to the work queue) and a
/// message out of attempts, or a `.deadLetter`, to `<service>.events.dead`; the original is
/// acked only once the broker confirmed that publish. Transient mode: the seed's
/// server-named, exclusive, auto-delete queue with auto-ack (a failure is logged; the
/// message is gone). With an ``InstanceQueue`` (durable mode), one process's own named queue
/// instead of `<service>.events` — for a consumer that needs every event (the boundary), not
/// a share of them — that keeps what is published while the process is away. The topology is
/// declared on every (re)connect, and the thread reconnects with exponential back-off and
/// jitter.
///
/// ```swift
/// let consumer = AMQPConsumer(settings: settings, queue: .init(service: "returns", mode: .durable),
///                             bindings: ["returns.events.prices_recorded"])
/// try await consumer.run { delivery in await service.handle(delivery) }
/// ```
public final class AMQPConsumer: EventConsumer, Sendable {
    /// One process's own queue (durable mode): every event bound goes to each such queue, so
    /// each process gets all of them (the boundary's replicas), and the queue outlives the
    /// process's connection, so what is published while it restarts waits for it. The broker
    /// deletes the queue once no one has consumed it for `expiresMs`; it keeps at most
    /// `maxLength` messages, dropping the oldest. No retry or dead-letter queue: a failed
    /// delivery is logged and acked, as in transient mode.
    public struct InstanceQueue: Sendable, Equatable {
        public var name: String
        public var expiresMs: Int
        public var maxLength: Int

        public init(name: String, expiresMs: Int, maxLength: Int) {
            self.name = name
            self.expiresMs = expiresMs
            self.maxLength = maxLength
        }
    }

    /// Which queue to consume, and the retry policy it follows.
    public struct QueueSpec: Sendable {
        public var service: String
        public var mode: QueueMode
        /// Unacked deliveries the broker may push ahead (durable mode): at least the batch
        /// size, for batches to fill (twice it by default: the next batch arrives while one is
        /// handled).
        public var prefetch: UInt16
        /// The most deliveries handed to the handler at once: what has arrived by the time it
        /// is free (no waiting for more), settled in delivery order.
        public var batchSize: Int
        /// The consumer stops reading deliveries while this many bytes of bodies are received
        /// and not yet settled (at least one delivery is always taken).
        public var maxInFlightBytes: Int
        /// Attempts and delays (durable mode): a delay queue per retrying attempt, and a retry
        /// past the last attempt goes to the dead-letter queue. Transient mode (auto-ack) has
        /// neither: a failed event is logged and dropped.
        public var policy: RetryPolicy
        /// What `<service>.events`, `<service>.events.dead` and the delay queues are declared as
        /// (durable mode).
        public var queueType: QueueType
        /// `<service>.events` is declared with `x-single-active-consumer`: of the worker
        /// replicas consuming it, one at a time gets deliveries (the others take over when it
        /// goes), so its events are handled in the order they were published — for handlers
        /// whose outcome depends on that order.
        public var singleActiveConsumer: Bool
        /// The process's own queue in place of `<service>.events` (durable mode only).
        public var instance: InstanceQueue?

        public init(service: String, mode: QueueMode, prefetch: UInt16 = 512, policy: RetryPolicy = RetryPolicy(),
                    batchSize: Int = 256, maxInFlightBytes: Int = 4 << 20, queueType: QueueType = .classic,
                    singleActiveConsumer: Bool = false, instance: InstanceQueue? = nil) {
            self.service = service
            self.instance = mode == .durable ? instance : nil
            self.singleActiveConsumer = singleActiveConsumer
            self.queueType = queueType
            self.batchSize = max(1, batchSize)
            self.maxInFlightBytes = max(1, maxInFlightBytes)
            self.mode = mode
            self.prefetch = prefetch
            self.policy = policy
        }

        /// `<service>.events` (or the instance queue's name) in durable mode; empty
        /// (server-named) in transient mode.
        public var declaredName: String { mode == .durable ? instance?.name ?? "\(service).events" : "" }
        /// `<service>.events.dead`.
        public var deadLetterQueue: String { "\(service).events.dead" }

        /// The arguments of every durable queue of the service: its type.
        var typeArguments: [String: HeaderValue] { queueType.arguments }

        /// The arguments of `<service>.events`: its type, and a single active consumer if so.
        var mainArguments: [String: HeaderValue] {
            singleActiveConsumer ? typeArguments.merging(["x-single-active-consumer": .bool(true)]) { _, new in new } : typeArguments
        }

        /// The arguments of the instance queue: its type, expiry and bound.
        var instanceArguments: [String: HeaderValue] {
            guard let instance else { return typeArguments }
            return typeArguments.merging([
                "x-expires": .int(Int64(instance.expiresMs)),
                "x-max-length": .int(Int64(instance.maxLength)),
                "x-overflow": .string("drop-head"),
            ]) { _, new in new }
        }

        /// The delay queue holding messages before attempt `attempt + 1`.
        public func retryQueue(after attempt: Int) -> String {
            "\(service).events.retry.\(policy.delayMs(after: attempt))ms"
        }
    }

    private struct Incoming: Sendable {
        let delivery: ReceivedDelivery
        let generation: Int
    }

    private struct Settlement {
        let incoming: Incoming
        let outcome: DeliveryOutcome
    }

    private struct State {
        var settlements: [Settlement] = []
        var stopped = false
        var draining = false
        /// The consumer thread is (about to be) blocked in `poll`: a settlement must wake it.
        var sleeping = false
        var queueName: String?
        var localPort: Int?
        /// The instance queue could not be declared on the last connection: the next one
        /// consumes a server-named queue instead, the one after tries it again.
        var instanceRefused = false
    }

    private let settings: AMQPSettings
    /// Which broker node to connect to (the next one after a lost connection).
    private let nodes: NodeCursor
    private let spec: QueueSpec
    private let bindings: [String]
    private let logger: Logger
    private let state = Mutex(State())
    private let wakeup = Wakeup()
    private let connectedFlag = Atomic<Bool>(false)
    private let inFlight = Atomic<Int>(0)
    /// The bodies' bytes of the deliveries in flight.
    private let inFlightBytes = Atomic<Int>(0)
    private let reconnects = Atomic<Int>(0)
    private let counters = Counters()

    public init(settings: AMQPSettings, queue: QueueSpec, bindings: [String],
                logger: Logger = Logger(label: "stega.amqp.consumer")) {
        self.settings = settings
        nodes = NodeCursor(nodes: settings.nodes.count)
        self.spec = queue
        self.bindings = bindings
        self.logger = logger
    }

    /// Whether the consumer's connection is open and consuming.
    public var isConnected: Bool { connectedFlag.load(ordering: .relaxed) }

    /// Whether the queue is declared, bound and consumed.
    public var isReady: Bool { isConnected }

    /// The name of the queue being consumed (server-named in transient mode), once declared.
    public var queueName: String? { state.withLock { $0.queueName } }

    /// How many times the connection was opened again after a loss.
    public var reconnectCount: Int { reconnects.load(ordering: .relaxed) }

    /// Deliveries sent to a delay queue for another attempt, and to the dead-letter queue.
    public var retriedCount: Int { counters.retried.load(ordering: .relaxed) }
    public var deadLetteredCount: Int { counters.deadLettered.load(ordering: .relaxed) }

    /// The local TCP port of the current connection (to find it on the broker in tests).
    var localPort: Int? { state.withLock { $0.localPort } }
    /// The index in `settings.nodes` of the node of the current (or last) connection.
    var node: Int { nodes.node }

    public func run(batchHandler handler: @escaping DeliveryBatchHandler) async throws {
        // Deliveries cross from the consumer thread to the handler's task through `mailbox`:
        // the handler takes everything that arrived while it was busy, up to the batch size.
        let mailbox = Mailbox()
        let done = Mutex<CheckedContinuation<Void, Never>?>(nil)
        let finished = Atomic<Bool>(false)
        state.withLock {
            $0.stopped = false
            $0.draining = false
        }
        let thread = Thread { [self] in
            self.loop(mailbox)
            mailbox.close()
            finished.store(true, ordering: .releasing)
            done.withLock { $0?.resume(); $0 = nil }
        }
        thread.name = "amqp-consumer"
        thread.start()

        await withTaskCancellationHandler {
            // Handlers run where they are woken: on this consumer's thread when deliveries
            // arrive, on the writer when their transaction commits (see `InlineExecutor`).
            await withTaskExecutorPreference(InlineExecutor.shared) {
                while let batch = await mailbox.take(max: spec.batchSize) {
                    let outcomes = await handler(batch.map(delivery))
                    settle(zip(batch, outcomes).map { Settlement(incoming: $0, outcome: $1) }, unhandled: [])
                }
                // Stopping: what arrived and was not handled is not settled (unacked, the
                // broker delivers it again).
                settle([], unhandled: mailbox.takeAll())
            }
        } onCancel: {
            // Stop taking deliveries; the batch being handled finishes and is settled first.
            self.state.withLock { $0.draining = true }
            mailbox.close()
            self.wakeup.signal()
        }
        state.withLock { $0.stopped = true }
        wakeup.signal()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let resumeNow = done.withLock { slot -> Bool in
                if finished.load(ordering: .acquiring) { return true }
                slot = c
                return false
            }
            if resumeNow { c.resume() }
        }
    }

    private func delivery(_ incoming: Incoming) -> Delivery {
        let message = incoming.delivery.message
        let envelope = message.envelope
        return Delivery(envelope: try? envelope.get(), problem: envelope.failureReason,
                        routingKey: message.originalRoutingKey, body: message.body,
                        redelivered: incoming.delivery.redelivered, attempt: message.attempt)
    }

    /// Deliveries read by the consumer thread, waiting for the handler's task.
    private final class Mailbox: Sendable {
        private struct State {
            var items: [Incoming] = []
            var waiter: CheckedContinuation<[Incoming]?, Never>?
            var max = 1
            var closed = false
        }

        private let state = Mutex(State())

        /// Adds `items`; a waiting handler gets them (up to its maximum) and runs here, on the
        /// calling thread, up to its first suspension (see `InlineExecutor`).
        func put(_ items: [Incoming]) {
            let resume = state.withLock { state -> (CheckedContinuation<[Incoming]?, Never>, [Incoming])? in
                state.items.append(contentsOf: items)
                guard let waiter = state.waiter else { return nil }
                state.waiter = nil
                let taken = Array(state.items.prefix(state.max))
                state.items.removeFirst(taken.count)
                return (waiter, taken)
            }
            if let (waiter, taken) = resume { InlineExecutor.inline { waiter.resume(returning: taken) } }
        }

        /// Up to `max` deliveries, waiting for at least one; `nil` once closed.
        func take(max: Int) async -> [Incoming]? {
            await withCheckedContinuation { continuation in
                let now = state.withLock { state -> [Incoming]?? in
                    if state.closed { return .some(nil) }
                    guard state.items.isEmpty else {
                        let taken = Array(state.items.prefix(max))
                        state.items.removeFirst(taken.count)
                        return .some(taken)
                    }
                    state.waiter = continuation
                    state.max = max
                    return .none
                }
                if case .some(let result) = now { continuation.resume(returning: result) }
            }
        }

        /// Whatever is left.
        func takeAll() -> [Incoming] {
            state.withLock { state in
                defer { state.items = [] }
                return state.items
            }
        }

        /// No more batches: a waiting handler gets `nil`.
        func close() {
            let waiter = state.withLock { state -> CheckedContinuation<[Incoming]?, Never>? in
                state.closed = true
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: nil)
        }
    }

    /// Hands a settlement to the consumer thread; wakes it only when it sleeps (an eventfd
    /// write per message costs more than the rest of the hand-off).
    private func settle(_ settlements: [Settlement], unhandled: [Incoming]) {
        let bytes = settlements.reduce(0) { $0 + $1.incoming.delivery.message.body.count }
            + unhandled.reduce(0) { $0 + $1.delivery.message.body.count }
        let wake = state.withLock { state -> Bool in
            inFlight.subtract(settlements.count + unhandled.count, ordering: .relaxed)
            inFlightBytes.subtract(bytes, ordering: .relaxed)
            state.settlements.append(contentsOf: settlements)
            defer { state.sleeping = false }
            return state.sleeping
        }
        if wake { wakeup.signal() }
    }

    // MARK: - The consumer thread

    private var maxInFlight: Int { spec.mode == .durable ? max(1, Int(spec.prefetch)) : 1000 }

    /// Whether the handler has as much as it may: the prefetch's count, or `maxInFlightBytes`
    /// of bodies (big events — a symbol's whole history — would otherwise all be held at once:
    /// 500 of 80 KB took the worker past 140 MB). One delivery always goes through.
    private var full: Bool {
        let count = inFlight.load(ordering: .relaxed)
        return count >= maxInFlight || (count > 0 && inFlightBytes.load(ordering: .relaxed) >= spec.maxInFlightBytes)
    }

    /// The thread's view of one open connection.
    private final class Session {
        let connection: RabbitMQConnection
        let generation: Int
        var nextPublishTag: UInt64 = 1
        /// Publish tag → delivery tag acked once the broker confirms that publish.
        var awaitingConfirm: [UInt64: UInt64] = [:]

        init(connection: RabbitMQConnection, generation: Int) {
            self.connection = connection
            self.generation = generation
        }
    }

    private func loop(_ output: Mailbox) {
        var session: Session?
        var generation = 0
        var backoff = Backoff(base: 0.25, cap: 5)
        var stopDeadline: Date?
        var consumedCounters: [String: Counter] = [:]
        var lastRead = ContinuousClock.now
        while true {
            let (settlements, stopped, draining) = state.withLock { state in
                defer { state.settlements.removeAll() }
                return (state.settlements, state.stopped, state.draining)
            }
            if let open = session {
                do {
                    try apply(settlements.filter { $0.incoming.generation == open.generation }, on: open)
                } catch {
                    lost(&session, error)
                    continue
                }
            }
            if stopped {
                // Wait a little for the confirms that hold back acks, then close.
                guard let open = session, !open.awaitingConfirm.isEmpty else { break }
                if stopDeadline == nil { stopDeadline = Date().addingTimeInterval(2) }
                if Date() > stopDeadline! { break }
            }
            guard let open = session else {
                if stopped { break }
                do {
                    generation += 1
                    session = Session(connection: try connect(), generation: generation)
                    inFlight.store(0, ordering: .relaxed)
                    inFlightBytes.store(0, ordering: .relaxed)
                    if generation > 1 {
                        reconnects.add(1, ordering: .relaxed)
                        Counter(label: "amqp_reconnects_total", dimensions: [("role", "consumer")]).increment()
                    }
                    backoff.reset()
                } catch {
                    let delay = backoff.next()
                    logger.warning("consumer cannot connect; retrying",
                                   metadata: ["error": "\(error)", "retry_in_s": "\(String(format: "%.2f", delay))"])
                    wakeup.wait(socket: nil, timeout: delay)
                }
                continue
            }
            let paused = stopped || draining || full
            // Paused with no confirm due: nothing to read, even what rabbitmq-c holds.
            let idle = paused && open.awaitingConfirm.isEmpty
            if !open.connection.hasBufferedInput || idle {
                // Sleep only when no settlement came in meanwhile (settle wakes a sleeper).
                let mayWait = state.withLock { state -> Bool in
                    guard state.settlements.isEmpty else { return false }
                    state.sleeping = true
                    return true
                }
                if mayWait {
                    // Paused: still watch the socket when confirms are due, so acks go out.
                    wakeup.wait(socket: idle ? nil : open.connection.socketFD, timeout: stopped ? 0.05 : 1)
                    state.withLock { $0.sleeping = false }
                }
                // A read a second all the same: it sends and checks heartbeats.
                if idle, ContinuousClock.now - lastRead < .seconds(1) { continue }
            }
            lastRead = .now
            do {
                // Reads also let rabbitmq-c send and check heartbeats, even on a time-out.
                var batch: [Incoming] = []
                // The handlers start here, up to their first suspension (see `InlineExecutor`).
                defer { if !batch.isEmpty { output.put(batch) } }
                readBuffered: while true {
                switch try open.connection.read(timeout: 0) {
                case .delivery(let delivery):
                    // Stopping, or past the prefetch (a delivery the broker should not have
                    // sent): not ours to handle now, given back at once. Past the bytes
                    // limit, a delivery already read is kept (given back, the broker would
                    // send it straight again); reading stops after it.
                    if (stopped || draining || inFlight.load(ordering: .relaxed) >= maxInFlight) && spec.mode == .durable {
                        try open.connection.nack(delivery.deliveryTag, requeue: true)
                        break readBuffered
                    }
                    inFlight.add(1, ordering: .relaxed)
                    inFlightBytes.add(delivery.message.body.count, ordering: .relaxed)
                    let key = delivery.message.originalRoutingKey
                    if let counter = consumedCounters[key] {
                        counter.increment()
                    } else {
                        let counter = Counter(label: "events_consumed_total", dimensions: [("routing_key", key)])
                        consumedCounters[key] = counter
                        counter.increment()
                    }
                    batch.append(Incoming(delivery: delivery, generation: open.generation))
                    // More in rabbitmq-c's buffer: take it into this batch (no syscall).
                    if !open.connection.hasBufferedInput || batch.count >= spec.batchSize || full { break readBuffered }
                case .frame(let frame):
                    try handle(frame, on: open)
                    break readBuffered
                case .nothing:
                    break readBuffered
                }
                }
            } catch {
                lost(&session, error)
            }
        }
        session?.connection.close()
        connectedFlag.store(false, ordering: .relaxed)
    }

    /// Applies settlements in the order they came. Consecutive acks go out as one
    /// `basic.ack multiple=1` for the last of them: deliveries are settled in delivery order
    /// (also when handled together), so every earlier tag is settled — unless an ack waits for a publish confirm
    /// (a retry or dead letter), in which case each ack goes out on its own.
    private func apply(_ settlements: [Settlement], on open: Session) throws {
        var pendingAck: UInt64?
        for s in settlements {
            if spec.mode == .durable, case .ack = s.outcome, open.awaitingConfirm.isEmpty {
                pendingAck = s.incoming.delivery.deliveryTag
                continue
            }
            if let tag = pendingAck {
                try open.connection.ack(tag, multiple: true)
                pendingAck = nil
            }
            try apply(s, on: open)
        }
        if let tag = pendingAck { try open.connection.ack(tag, multiple: true) }
    }

    private func apply(_ s: Settlement, on open: Session) throws {
        let delivery = s.incoming.delivery
        guard spec.mode == .durable, spec.instance == nil else {
            switch s.outcome {
            case .ack: break
            case .retry(let reason), .deadLetter(let reason):
                logger.error("a failed event is dropped (no retry, no dead letter for this queue)",
                             metadata: ["amqp.routing_key": "\(delivery.message.originalRoutingKey)", "error": "\(reason)"])
            }
            if spec.mode == .durable { try open.connection.ack(delivery.deliveryTag) }
            return
        }
        switch spec.policy.settlement(of: s.outcome, attempt: delivery.message.attempt) {
        case .ack:
            try open.connection.ack(delivery.deliveryTag)
        case .retry(let reason):
            var message = delivery.message
            let attempt = message.attempt
            message.headers[AMQPMessage.Header.routingKey] = .string(message.originalRoutingKey)
            message.headers[AMQPMessage.Header.attempt] = .int(Int64(attempt + 1))
            message.headers[AMQPMessage.Header.error] = .string(String(reason.prefix(1000)))
            message.deliveryMode = 2
            try publishHoldingAck(message, to: spec.retryQueue(after: attempt), delivery: delivery, on: open)
            counters.retried.add(1, ordering: .relaxed)
            Counter(label: "events_retried_total", dimensions: [("routing_key", message.originalRoutingKey)]).increment()
            logger.warning("event will be retried", metadata: [
                "amqp.routing_key": "\(message.originalRoutingKey)", "attempt": "\(attempt)",
                "retry_in_ms": "\(spec.policy.delayMs(after: attempt))", "error": "\(reason)",
            ])
        case .deadLetter(let reason):
            var message = delivery.message
            message.headers[AMQPMessage.Header.routingKey] = .string(message.originalRoutingKey)
            message.headers[AMQPMessage.Header.error] = .string(String(reason.prefix(1000)))
            message.headers[AMQPMessage.Header.attempts] = .int(Int64(message.attempt))
            message.headers[AMQPMessage.Header.attempt] = nil
            message.deliveryMode = 2
            try publishHoldingAck(message, to: spec.deadLetterQueue, delivery: delivery, on: open)
            counters.deadLettered.add(1, ordering: .relaxed)
            Counter(label: "events_dead_lettered_total", dimensions: [("routing_key", message.originalRoutingKey)]).increment()
            logger.error("event dead-lettered", metadata: [
                "amqp.routing_key": "\(message.originalRoutingKey)", "amqp.queue": "\(spec.deadLetterQueue)",
                "attempts": "\(message.attempt)", "error": "\(reason)",
            ])
        }
    }

    /// Publishes `message` to `queue` (default exchange); `delivery` is acked when the broker
    /// confirms it.
    private func publishHoldingAck(_ message: AMQPMessage, to queue: String, delivery: ReceivedDelivery,
                                   on open: Session) throws {
        try open.connection.publish(message, exchange: "", routingKey: queue, mandatory: false)
        open.awaitingConfirm[open.nextPublishTag] = delivery.deliveryTag
        open.nextPublishTag += 1
    }

    private func handle(_ frame: ServerFrame, on open: Session) throws {
        switch frame {
        case .ack(let tag, let multiple), .nack(let tag, let multiple):
            let tags = multiple ? open.awaitingConfirm.keys.filter { $0 <= tag }.sorted() : [tag]
            let confirmed: Bool
            if case .ack = frame { confirmed = true } else { confirmed = false }
            for publishTag in tags {
                guard let deliveryTag = open.awaitingConfirm.removeValue(forKey: publishTag) else { continue }
                if confirmed {
                    try open.connection.ack(deliveryTag)
                } else {
                    // The broker lost the copy: give the original back to be handled again.
                    try open.connection.nack(deliveryTag, requeue: true)
                }
            }
        case .consumerCancelled:
            throw AMQPError(.serverClosedChannel, "the broker cancelled the consumer (queue deleted?)",
                            context: "basic.cancel")
        case .returned, .other:
            break
        }
    }

    private func lost(_ session: inout Session?, _ error: any Error) {
        logger.warning("consumer connection lost; reconnecting", metadata: ["error": "\(error)"])
        session?.connection.abandon()
        session = nil
        connectedFlag.store(false, ordering: .relaxed)
    }

    private func connect() throws -> RabbitMQConnection {
        let (connection, node) = try RabbitMQConnection.connect(settings: settings, order: nodes.order)
        nodes.connected(to: node)
        try connection.declareExchange(settings.exchange, type: settings.exchangeType, durable: true)
        let name: String
        var exclusive = spec.mode == .transient
        switch spec.mode {
        case .durable where spec.instance != nil:
            (name, exclusive) = try declareInstanceQueue(on: connection)
            try connection.setPrefetch(spec.prefetch)
        case .durable:
            name = try connection.declareQueue(spec.declaredName, durable: true, exclusive: false, autoDelete: false,
                                               arguments: spec.mainArguments).name
            _ = try connection.declareQueue(spec.deadLetterQueue, durable: true, exclusive: false, autoDelete: false,
                                            arguments: spec.typeArguments)
            for attempt in spec.policy.retryingAttempts {
                // A delay queue of a quorum service is a quorum queue too: a message waiting
                // for its retry is not lost with one node (message TTL and dead-lettering of
                // quorum queues: RabbitMQ 3.10 and later).
                _ = try connection.declareQueue(
                    spec.retryQueue(after: attempt), durable: true, exclusive: false, autoDelete: false,
                    arguments: spec.typeArguments.merging([
                        "x-message-ttl": .int(Int64(spec.policy.delayMs(after: attempt))),
                        "x-dead-letter-exchange": .string(""),
                        "x-dead-letter-routing-key": .string(spec.declaredName),
                    ]) { _, new in new })
            }
            try connection.setPrefetch(spec.prefetch)
            try connection.selectConfirms()
        case .transient:
            name = try connection.declareQueue("", durable: false, exclusive: true, autoDelete: true).name
        }
        for key in bindings {
            try connection.bindQueue(name, exchange: settings.exchange, routingKey: key)
        }
        _ = try connection.consume(queue: name, autoAck: spec.mode == .transient, exclusive: exclusive)
        state.withLock {
            $0.queueName = name
            $0.localPort = connection.localPort
        }
        connectedFlag.store(true, ordering: .relaxed)
        logger.info("consuming", metadata: [
            "amqp.queue": "\(name)", "amqp.queue_mode": "\(spec.mode.rawValue)",
            "amqp.queue_type": "\(exclusive ? "transient" : spec.queueType.rawValue)",
            "amqp.bindings": "\(bindings.joined(separator: ","))", "amqp.url": "\(settings.nodes[node])",
        ])
        return connection
    }

    /// Declares the instance queue, or — when the broker refused it on the last connection
    /// (its home node down, or an older queue of that name declared otherwise) — a
    /// server-named exclusive one, so the process still gets every event while it runs.
    private func declareInstanceQueue(on connection: RabbitMQConnection) throws -> (name: String, exclusive: Bool) {
        let fallBack = state.withLock { state in
            defer { state.instanceRefused = false }
            return state.instanceRefused
        }
        if fallBack {
            logger.error("the instance queue was refused; consuming a server-named queue on this connection (events published while this process is away are not kept)",
                         metadata: ["amqp.queue": "\(spec.declaredName)"])
            return (try connection.declareQueue("", durable: false, exclusive: true, autoDelete: true).name, true)
        }
        do {
            return (try connection.declareQueue(spec.declaredName, durable: true, exclusive: false, autoDelete: false,
                                                arguments: spec.instanceArguments).name, false)
        } catch let error as AMQPError where error.code == .serverClosedChannel {
            state.withLock { $0.instanceRefused = true }
            throw error
        }
    }

    final class Counters: Sendable {
        let retried = Atomic<Int>(0)
        let deadLettered = Atomic<Int>(0)
    }
}
