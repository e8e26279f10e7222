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
    private let relayId = "relay-" + UUID().uuidString.lowercased()
    private let stopping = Atomic<Bool>(false)
    private let published = Atomic<Int>(0)
    private let depthGauge = Gauge(label: "outbox_depth")

    public init(database: ServiceDatabase, publisher: any EventPublisher, batchSize: Int = 500,
                flushTimeout: Duration = .seconds(5), logger: Logger = Logger(label: "stega.outbox")) {
        self.database = database
        self.publisher = publisher
        self.batchSize = batchSize
        self.flushTimeout = flushTimeout
        self.logger = logger
    }

    /// Events published since start.
    public var publishedCount: Int { published.load(ordering: .relaxed) }

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
        while true {
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
                depthGauge.record(0)
                if flushDeadline != nil { break }
                await database.outboxBell.wait(timeout: .seconds(1))
                continue
            }
            do {
                try await publisher.publish(batch.map(\.1))
                try await database.pool.write { db in try Outbox.remove(batch.map(\.0), in: db) }
                published.add(batch.count, ordering: .relaxed)
                for envelope in batch.map(\.1) {
                    Counter(label: "events_published_total", dimensions: [("routing_key", envelope.routingKey)]).increment()
                }
                await recordDepth()
                if failures > 0 { logger.info("outbox publishing again", metadata: ["outbox.batch": "\(batch.count)"]) }
                failures = 0
                for envelope in batch.map(\.1) {
                    logger.trace("published", metadata: [
                        "amqp.routing_key": "\(envelope.routingKey)",
                        "bus.event_id": "\(envelope.eventId.uuidString.lowercased())",
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
        await recordDepth()
        let left = (try? await database.pool.read { db in try Outbox.depth(in: db) }) ?? -1
        logger.info("outbox relay stopped", metadata: ["outbox.depth": "\(left)"])
    }

    /// Sets the `outbox_depth` gauge: rows waiting to be published.
    private func recordDepth() async {
        if let depth = try? await database.pool.read({ db in try Outbox.depth(in: db) }) { depthGauge.record(depth) }
    }
}
