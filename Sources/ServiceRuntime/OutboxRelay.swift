import EventCatalog
import Foundation
import GRDB
import Logging
import Metrics
import MessageBus
import ServiceLifecycle
import Synchronization

/// Publishes the outbox: claims pending rows, publishes them as one batch (with confirms,
/// when the publisher uses them) and deletes them once the broker took them. A failed
/// batch stays in the outbox and is tried again with back-off.
///
/// On graceful shutdown it keeps flushing for at most `flushTimeout`; what is left stays in
/// the outbox for the next start.
public final class OutboxRelay: Service, Sendable {
    private let database: ServiceDatabase
    private let publisher: any EventPublisher
    private let logger: Logger
    private let batchSize: Int
    private let flushTimeout: Duration
    private let relayId = "relay-" + UUID().lowercaseText
    private let stopping = Atomic<Bool>(false)
    private let depthGauge = Gauge(label: "outbox_depth")
    private let batches = ActivityCount()

    /// Batches taken from the outbox since start: an activity signal.
    public var batchCount: Int { batches.value }

    public init(database: ServiceDatabase, publisher: any EventPublisher, batchSize: Int = 500,
                flushTimeout: Duration = .seconds(5), logger: Logger = Logger(label: "stega.outbox")) {
        self.database = database
        self.publisher = publisher
        self.batchSize = batchSize
        self.flushTimeout = flushTimeout
        self.logger = logger
    }

    public func run() async throws {
        await withGracefulShutdownHandler {
            await loop()
        } onGracefulShutdown: {
            self.stopping.store(true, ordering: .relaxed)
            self.database.outboxBell.ring()
        }
    }

    private func loop() async {
        var failures = 0
        var flushDeadline: ContinuousClock.Instant?
        var depthMeasured = ContinuousClock.now - .seconds(1)
        while true {
            // The gauge at most once a second, off the per-batch path, and also while the
            // broker is down (when it matters most).
            if ContinuousClock.now - depthMeasured >= .seconds(1) {
                depthMeasured = .now
                _ = await measureDepth()
            }
            if stopping.load(ordering: .relaxed), flushDeadline == nil {
                flushDeadline = .now + flushTimeout
            }
            if let deadline = flushDeadline, ContinuousClock.now >= deadline { break }
            if Task.isCancelled { break }
            let batch: [(Int64, EventEnvelope)]
            do {
                batch = try await database.pool.write { [relayId, batchSize] db in
                    try Outbox.claim(limit: batchSize, relay: relayId, staleAfter: 5, in: db)
                }
            } catch {
                logger.error("outbox read failed", metadata: ["error": "\(error)"])
                await database.outboxBell.wait(timeout: .seconds(1))
                continue
            }
            if batch.isEmpty {
                if flushDeadline != nil { break }
                await database.outboxBell.wait(timeout: .seconds(1))
                continue
            }
            batches.increment()
            let envelopes = batch.map(\.1)
            do {
                try await publisher.publish(envelopes)
                try await database.pool.write { db in try Outbox.remove(batch.map(\.0), in: db) }
                // One counter update per routing key and batch, not per event.
                for (key, count) in Dictionary(envelopes.map { ($0.routingKey, 1) }, uniquingKeysWith: +) {
                    Counter(label: "events_published_total", dimensions: [("routing_key", key)]).increment(by: count)
                }
                if failures > 0 { logger.info("outbox publishing again", metadata: ["outbox.batch": "\(batch.count)"]) }
                failures = 0
                for envelope in envelopes {
                    logger.trace("published", metadata: [
                        "amqp.routing_key": "\(envelope.routingKey)",
                        "bus.event_id": "\(envelope.eventId.lowercaseText)",
                        "bus.correlation_id": "\(envelope.correlationId ?? "")",
                    ])
                }
            } catch {
                failures += 1
                let delay = min(2.0, 0.1 * pow(2.0, Double(min(failures, 8))))
                if failures == 1 || failures % 20 == 0 {
                    logger.warning("outbox publish failed; will retry", metadata: [
                        "error": "\(error)", "outbox.batch": "\(batch.count)", "attempt": "\(failures)",
                    ])
                }
                await database.outboxBell.wait(timeout: .milliseconds(Int64(delay * Double.random(in: 500...1000))))
            }
        }
        let left = await measureDepth() ?? -1
        logger.info("outbox relay stopped", metadata: ["outbox.depth": "\(left)"])
    }

    /// Sets the `outbox_depth` gauge (rows waiting to be published) and returns it.
    private func measureDepth() async -> Int? {
        let depth = try? await database.pool.read { db in try Outbox.depth(in: db) }
        if let depth { depthGauge.record(depth) }
        return depth
    }
}
