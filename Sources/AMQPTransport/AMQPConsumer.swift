import EventCatalog
import Foundation
import Logging
import MessageBus
import Synchronization

/// Consumes a service's events on one long-lived connection, owned by a dedicated thread.
///
/// Durable mode: queue `<service>.events` (durable), `basic.qos` prefetch, manual ack after
/// the handler returns (`.retry` nacks with requeue, `.reject` nacks without). Transient
/// mode: the seed's server-named, exclusive, auto-delete queue with auto-ack.
/// The topology (exchange, queue, bindings, qos) is declared on every (re)connect, and the
/// thread reconnects with exponential back-off and jitter.
///
/// ```swift
/// let consumer = AMQPConsumer(settings: settings, queue: .init(service: "returns", mode: .durable),
///                             bindings: ["returns.events.prices_recorded"])
/// try await consumer.run { delivery in await bus.handle(delivery) }
/// ```
public final class AMQPConsumer: EventConsumer, Sendable {
    /// Which queue to consume.
    public struct QueueSpec: Sendable, Equatable {
        public var service: String
        public var mode: QueueMode
        /// Unacked deliveries the broker may push ahead (durable mode).
        public var prefetch: UInt16

        public init(service: String, mode: QueueMode, prefetch: UInt16 = 50) {
            self.service = service
            self.mode = mode
            self.prefetch = prefetch
        }

        /// `<service>.events` in durable mode; empty (server-named) in transient mode.
        public var declaredName: String { mode == .durable ? "\(service).events" : "" }
    }

    private struct Settlement {
        let generation: Int
        let tag: UInt64
        let outcome: DeliveryOutcome
    }

    private struct Incoming: Sendable {
        let delivery: Delivery
        let generation: Int
        let tag: UInt64
    }

    private struct State {
        var settlements: [Settlement] = []
        var stopped = false
        var draining = false
        var queueName: String?
    }

    private let settings: AMQPSettings
    private let spec: QueueSpec
    private let bindings: [String]
    private let logger: Logger
    private let state = Mutex(State())
    private let wakeup = Wakeup()
    private let connectedFlag = Atomic<Bool>(false)
    private let inFlight = Atomic<Int>(0)
    private let reconnects = Atomic<Int>(0)

    public init(settings: AMQPSettings, queue: QueueSpec, bindings: [String],
                logger: Logger = Logger(label: "stega.amqp.consumer")) {
        self.settings = settings
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

    public func run(handler: @escaping DeliveryHandler) async throws {
        let (stream, continuation) = AsyncStream<Incoming>.makeStream()
        let done = Mutex<CheckedContinuation<Void, Never>?>(nil)
        let finished = Atomic<Bool>(false)
        state.withLock {
            $0.stopped = false
            $0.draining = false
        }
        let thread = Thread { [self] in
            self.loop(continuation)
            continuation.finish()
            finished.store(true, ordering: .releasing)
            done.withLock { $0?.resume(); $0 = nil }
        }
        thread.name = "amqp-consumer"
        thread.start()

        await withTaskCancellationHandler {
            for await incoming in stream {
                let outcome = await handler(incoming.delivery)
                settle(incoming, outcome)
                if Task.isCancelled { break }
            }
        } onCancel: {
            // Stop taking deliveries; the one being handled finishes and is settled first.
            self.state.withLock { $0.draining = true }
            self.wakeup.signal()
        }
        stop()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let resumeNow = done.withLock { slot -> Bool in
                if finished.load(ordering: .acquiring) { return true }
                slot = c
                return false
            }
            if resumeNow { c.resume() }
        }
    }

    private func stop() {
        state.withLock { $0.stopped = true }
        wakeup.signal()
    }

    private func settle(_ incoming: Incoming, _ outcome: DeliveryOutcome) {
        if spec.mode == .durable {
            state.withLock {
                $0.settlements.append(Settlement(generation: incoming.generation, tag: incoming.tag,
                                                 outcome: outcome))
            }
        }
        inFlight.subtract(1, ordering: .relaxed)
        wakeup.signal()
    }

    // MARK: - The consumer thread

    private var maxInFlight: Int { spec.mode == .durable ? max(1, Int(spec.prefetch)) : 1000 }

    private func loop(_ output: AsyncStream<Incoming>.Continuation) {
        var connection: RabbitMQConnection?
        var generation = 0
        var backoff = Backoff()
        while true {
            let (settlements, stopped, draining) = state.withLock { state in
                defer { state.settlements.removeAll() }
                return (state.settlements, state.stopped, state.draining)
            }
            if let open = connection {
                do {
                    for s in settlements where s.generation == generation {
                        switch s.outcome {
                        case .ack: try open.ack(s.tag)
                        case .retry: try open.nack(s.tag, requeue: true)
                        case .reject: try open.nack(s.tag, requeue: false)
                        }
                    }
                } catch {
                    lost(&connection, error)
                    continue
                }
            }
            if stopped { break }
            guard let open = connection else {
                do {
                    connection = try connect()
                    generation += 1
                    inFlight.store(0, ordering: .relaxed)
                    if backoff.attempt > 0 { reconnects.add(1, ordering: .relaxed) }
                    backoff.reset()
                } catch {
                    let delay = backoff.next()
                    logger.warning("consumer cannot connect; retrying",
                                   metadata: ["error": "\(error)", "retry_in_s": "\(String(format: "%.2f", delay))"])
                    wakeup.wait(socket: nil, timeout: delay)
                }
                continue
            }
            if draining || inFlight.load(ordering: .relaxed) >= maxInFlight {
                wakeup.wait(socket: nil, timeout: 1)
                continue
            }
            let readable = open.hasBufferedInput || wakeup.wait(socket: open.socketFD, timeout: 1)
            do {
                // On a time-out this still lets rabbitmq-c send and check heartbeats.
                guard let message = try open.nextDelivery(timeout: 0) else { continue }
                _ = readable
                inFlight.add(1, ordering: .relaxed)
                output.yield(Incoming(delivery: Self.delivery(from: message), generation: generation,
                                      tag: message.deliveryTag))
            } catch {
                lost(&connection, error)
            }
        }
        connection?.close()
        connectedFlag.store(false, ordering: .relaxed)
    }

    private func lost(_ connection: inout RabbitMQConnection?, _ error: any Error) {
        logger.warning("consumer connection lost; reconnecting", metadata: ["error": "\(error)"])
        connection?.abandon()
        connection = nil
        connectedFlag.store(false, ordering: .relaxed)
    }

    private func connect() throws -> RabbitMQConnection {
        let connection = try RabbitMQConnection(settings: settings)
        try connection.declareExchange(settings.exchange, type: settings.exchangeType, durable: true)
        let declared: (name: String, messages: UInt32)
        switch spec.mode {
        case .durable:
            declared = try connection.declareQueue(spec.declaredName, durable: true, exclusive: false,
                                                   autoDelete: false)
            try connection.setPrefetch(spec.prefetch)
        case .transient:
            declared = try connection.declareQueue("", durable: false, exclusive: true, autoDelete: true)
        }
        for key in bindings {
            try connection.bindQueue(declared.name, exchange: settings.exchange, routingKey: key)
        }
        _ = try connection.consume(queue: declared.name, autoAck: spec.mode == .transient,
                                   exclusive: spec.mode == .transient)
        state.withLock { $0.queueName = declared.name }
        connectedFlag.store(true, ordering: .relaxed)
        logger.info("consuming", metadata: [
            "amqp.queue": "\(declared.name)", "amqp.queue_mode": "\(spec.mode.rawValue)",
            "amqp.bindings": "\(bindings.joined(separator: ","))", "amqp.url": "\(settings.url)",
        ])
        return connection
    }

    /// The delivery of `message`; its envelope is `nil` unless it carries a UUID `message_id`.
    static func delivery(from message: ReceivedMessage) -> Delivery {
        var envelope: EventEnvelope?
        if let id = message.messageId.flatMap(UUID.init(uuidString:)) {
            envelope = EventEnvelope(
                eventId: id, routingKey: message.routingKey, type: message.type,
                correlationId: message.correlationId, causationId: message.headers["causation_id"]?.string,
                appId: message.appId ?? "",
                timestamp: Date(timeIntervalSince1970: Double(message.timestamp ?? 0)),
                schemaVersion: message.headers["schema_version"]?.int ?? 1,
                traceparent: message.headers["traceparent"]?.string,
                contentType: message.contentType ?? "application/json",
                body: Data(message.body))
        }
        return Delivery(envelope: envelope, routingKey: message.routingKey, body: message.body,
                        redelivered: message.redelivered)
    }
}
