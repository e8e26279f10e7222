import EventCatalog
import Foundation
import Logging
import MessageBus
import Synchronization

/// Publishes events on one long-lived connection, owned by a dedicated thread.
///
/// Every call of ``publish(_:)`` queues its envelopes; the thread publishes all that are
/// queued, then (with confirms) waits for the broker's acks of the whole batch at once,
/// so confirms cost one round trip per batch, not per message. A failed batch fails its
/// callers and the connection is opened again on the next batch.
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
    private let confirms: Bool
    private let persistent: Bool
    private let logger: Logger
    private let state = Mutex(State())
    private let wakeup = Wakeup()
    private let connectedFlag = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)

    /// - Parameters:
    ///   - confirms: publisher confirms (`confirm.select`): `publish` returns after the broker's ack.
    ///   - persistent: `delivery_mode` 2.
    public init(settings: AMQPSettings, confirms: Bool = true, persistent: Bool = true,
                logger: Logger = Logger(label: "stega.amqp.publisher")) {
        self.settings = settings
        self.confirms = confirms
        self.persistent = persistent
        self.logger = logger
        let thread = Thread { [self] in self.loop() }
        thread.name = "amqp-publisher"
        thread.start()
    }

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

    private func loop() {
        var connection: RabbitMQConnection?
        var nextTag: UInt64 = 1
        var backoff = Backoff()
        var nextAttempt = Date()
        while true {
            let (jobs, stopped) = state.withLock { state in
                defer { state.jobs.removeAll() }
                return (state.jobs, state.stopped)
            }
            if jobs.isEmpty {
                if stopped { break }
                if connection == nil {
                    // Connect ahead of the first publish, so readiness reflects the broker.
                    if Date() >= nextAttempt {
                        do {
                            connection = try connect()
                            nextTag = 1
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
                let readable = wakeup.wait(socket: connection?.socketFD, timeout: 1)
                if let open = connection, readable || open.hasBufferedInput {
                    do {
                        while let frame = try open.nextFrame(timeout: 0) { note(frame) }
                    } catch {
                        logger.warning("publisher connection lost", metadata: ["error": "\(error)"])
                        connection = nil
                        connectedFlag.store(false, ordering: .relaxed)
                    }
                }
                continue
            }
            do {
                if connection == nil {
                    connection = try connect()
                    nextTag = 1
                }
                guard let open = connection else { continue }
                let envelopes = jobs.flatMap(\.envelopes)
                for envelope in envelopes {
                    try open.publish(envelope, exchange: settings.exchange, persistent: persistent,
                                     mandatory: true)
                }
                if confirms {
                    let last = nextTag + UInt64(envelopes.count) - 1
                    try awaitConfirms(open, from: nextTag, upTo: last)
                    nextTag = last + 1
                }
                jobs.forEach { $0.continuation.resume() }
            } catch {
                logger.warning("publish failed", metadata: ["error": "\(error)"])
                connection?.abandon()
                connection = nil
                connectedFlag.store(false, ordering: .relaxed)
                jobs.forEach { $0.continuation.resume(throwing: error) }
            }
        }
        connection?.close()
        connection = nil
        connectedFlag.store(false, ordering: .relaxed)
        finished.store(true, ordering: .releasing)
    }

    private func connect() throws -> RabbitMQConnection {
        let connection = try RabbitMQConnection(settings: settings)
        try connection.declareExchange(settings.exchange, type: settings.exchangeType, durable: true)
        if confirms { try connection.selectConfirms() }
        connectedFlag.store(true, ordering: .relaxed)
        logger.info("publisher connected", metadata: ["amqp.url": "\(settings.url)"])
        return connection
    }

    /// Reads frames until every delivery tag in `first...last` is acked; throws on a nack.
    private func awaitConfirms(_ connection: RabbitMQConnection, from first: UInt64, upTo last: UInt64) throws {
        // Every tag up to `confirmed` is acked; single acks beyond it wait in `pendingSingles`.
        var confirmed = first - 1
        var pendingSingles = Set<UInt64>()
        let deadline = Date().addingTimeInterval(30)
        while confirmed < last {
            guard Date() < deadline else {
                throw AMQPError(.confirmTimeout, "no confirm for delivery tag \(confirmed + 1)")
            }
            guard let frame = try connection.nextFrame(timeout: 1) else { continue }
            switch frame {
            case .ack(let tag, let multiple):
                if multiple { confirmed = max(confirmed, tag) } else { pendingSingles.insert(tag) }
                while pendingSingles.remove(confirmed + 1) != nil { confirmed += 1 }
            case .nack(let tag, _):
                throw AMQPError(.publishNacked, "broker nacked delivery tag \(tag)")
            default:
                note(frame)
            }
        }
    }

    private func note(_ frame: ServerFrame) {
        if case .returned(let key, let text) = frame {
            logger.debug("event unroutable: no queue is bound to its routing key",
                         metadata: ["amqp.routing_key": "\(key)", "amqp.reply_text": "\(text)"])
        }
    }
}
