import EventCatalog
import Foundation
import GRDB
import Handoff
import Logging
import Metrics
import MessageBus
import ServiceLifecycle
import Synchronization

/// Publishes the outbox.
///
/// The rows this process's writes add are claimed by its relay in the same transaction and
/// handed over in memory once committed, so the relay publishes them without reading them
/// back (with confirms, when the publisher uses them); the rows the broker took are deleted
/// in the next shared transaction. The table is swept for rows nobody claimed and rows whose
/// claim is older than `staleAfter` (their process died): at start, when idle and at least
/// every 5 s. After a failed publish (with back-off), or when more rows wait than it keeps in
/// memory, the relay sweeps its own rows too, in order: a failed batch stays in the outbox.
///
/// On graceful shutdown it keeps flushing for at most `flushTimeout`; what is left stays in
/// the outbox for the next start.
public final class OutboxRelay: Service, Sendable {
    private enum Sweep { case none, others, all }

    private let database: ServiceDatabase
    private let publisher: any EventPublisher
    private let logger: Logger
    private let batchSize: Int
    private let flushTimeout: Duration
    private let staleAfter: Double
    private let stopping = Atomic<Bool>(false)
    private let depthGauge = Gauge(label: "outbox_depth")
    private let batches = ActivityCount()

    /// Batches published since start: an activity signal.
    public var batchCount: Int { batches.value }

    public init(database: ServiceDatabase, publisher: any EventPublisher, batchSize: Int = 1_000,
                flushTimeout: Duration = .seconds(5), staleAfter: Double = 5,
                logger: Logger = Logger(label: "stega.outbox")) {
        self.database = database
        self.publisher = publisher
        self.batchSize = batchSize
        self.flushTimeout = flushTimeout
        self.staleAfter = staleAfter
        self.logger = logger
    }

    public func run() async throws {
        await withGracefulShutdownHandler {
            // The loop runs where it is woken — the writer after a commit, the publisher
            // thread after the broker's confirm — not on a pool thread woken for it.
            await withTaskExecutorPreference(InlineExecutor.shared) { await loop() }
        } onGracefulShutdown: {
            self.stopping.store(true, ordering: .relaxed)
            self.database.outboxBell.ring()
        }
    }

    private func loop() async {
        var failures = 0
        var flushDeadline: ContinuousClock.Instant?
        var depthMeasured = ContinuousClock.now - .seconds(1)
        // Committed rows not yet published, in commit order.
        var committed: [(Int64, EventEnvelope)] = []
        var sweep = Sweep.others
        var swept = ContinuousClock.now
        // The highest row a sweep of every row published: committed rows up to it are out.
        var sweptUpTo: Int64 = 0
        // Rows the last claim returned (a short one: the sweep is near its end).
        var lastClaim = 0
        // The last turn waited for the bell: if nothing came, the relay is idle.
        var waited = false
        /// Takes the rows committed since the last call (minus those a sweep already
        /// published); too many waiting, and the relay sweeps its own rows instead. Says
        /// whether any came, and whether too many did.
        func takeCommitted(droppingUpTo published: Int64 = 0) -> (came: Bool, overflowed: Bool) {
            let taken = database.takeCommittedOutboxRows()
            committed.append(contentsOf: published > 0 ? taken.rows.filter { $0.0 > published } : taken.rows)
            let overflowed = taken.overflowed || committed.count > OutboxFeed.limit
            if overflowed {
                // They are in the table, claimed by this relay.
                committed.removeAll()
                enterSweepOfAll(&sweep, &lastClaim)
            }
            return (!taken.rows.isEmpty || taken.overflowed, overflowed)
        }
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
            let came = takeCommitted().came
            // Idle, or 5 s since the last sweep: a sweep for rows other processes left.
            if sweep == .none, (waited && !came) || ContinuousClock.now - swept >= .seconds(5) { sweep = .others }
            waited = false
            let batch: [(Int64, EventEnvelope)]
            if sweep != .none {
                // While the relay sweeps its own rows, new ones stay in the table; the feed
                // opens again for the last claims, so none committed meanwhile is missed.
                var feedWasOpen = true
                if sweep == .all {
                    feedWasOpen = database.outboxFeedOpen
                    if !feedWasOpen, lastClaim < batchSize { database.outboxFeedOpen = true }
                }
                do {
                    batch = try await database.claimOutboxRows(limit: batchSize, includeOwn: sweep == .all,
                                                               staleAfter: staleAfter)
                } catch {
                    if Task.isCancelled { break }
                    logger.error("outbox read failed", metadata: ["error": "\(error)"])
                    await database.outboxBell.wait(timeout: .seconds(1))
                    continue
                }
                lastClaim = batch.count
                if batch.isEmpty {
                    // Rows committed while the feed was closed are only in the table: claim again.
                    if !feedWasOpen { continue }
                    if sweep == .all {
                        // Every row committed before this claim was fed already: those up to
                        // `sweptUpTo` went out with the sweep.
                        committed.removeAll { $0.0 <= sweptUpTo }
                        if takeCommitted(droppingUpTo: sweptUpTo).overflowed { continue }
                    }
                    sweep = .none
                    swept = .now
                    continue
                }
                if sweep == .all { sweptUpTo = max(sweptUpTo, batch.last!.0) }
            } else if !committed.isEmpty {
                batch = Array(committed.prefix(batchSize))
                committed.removeFirst(batch.count)
            } else {
                if flushDeadline != nil { break }
                await database.outboxBell.wait(timeout: .seconds(1))
                waited = true
                continue
            }
            batches.increment()
            let envelopes = batch.map(\.1)
            do {
                try await publisher.publish(envelopes)
                database.removeFromOutbox(batch.map(\.0))
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
                // The batch and every committed row are in the table, claimed by this relay:
                // the sweep publishes them, in order.
                committed.removeAll()
                enterSweepOfAll(&sweep, &lastClaim)
                let delay = min(2.0, 0.1 * pow(2.0, Double(min(failures, 8))))
                if failures == 1 || failures % 20 == 0 {
                    logger.warning("outbox publish failed; will retry", metadata: [
                        "error": "\(error)", "outbox.batch": "\(batch.count)", "attempt": "\(failures)",
                    ])
                }
                // A sleep, not the bell: every write accepted during an outage rings it, and
                // would cut the back-off short.
                try? await Task.sleep(for: .milliseconds(Int64(delay * Double.random(in: 500...1000))))
            }
        }
        try? await database.commitOutboxRemovals()
        let left = await measureDepth() ?? -1
        logger.info("outbox relay stopped", metadata: ["outbox.depth": "\(left)"])
    }

    /// Sweeps every row this relay claimed, in order; the feed stays closed meanwhile.
    private func enterSweepOfAll(_ sweep: inout Sweep, _ lastClaim: inout Int) {
        database.outboxFeedOpen = false
        sweep = .all
        lastClaim = batchSize
    }

    /// Sets the `outbox_depth` gauge (rows waiting to be published) and returns it.
    private func measureDepth() async -> Int? {
        let depth = try? await database.pool.read { db in try Outbox.depth(in: db) }
        if let depth { depthGauge.record(depth) }
        return depth
    }
}
