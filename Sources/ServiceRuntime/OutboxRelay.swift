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
/// Batches of committed rows do not wait for the confirms of the ones before (up to
/// `maxInFlight` at once): with a publish per batch awaited in turn, an event committed while
/// a batch waited for the broker's disk sync waited too. A sweep runs only with nothing in
/// flight; after a failure the relay lets the batches in flight end, then sweeps (a batch
/// confirmed after an earlier one failed has gone out before that one is published again).
///
/// While too many committed rows wait in memory or for their confirms (the broker takes
/// messages more slowly than the writes come), the relay holds new commands back at
/// ``ServiceDatabase/admission`` (see ``admit(lag:)``).
///
/// On graceful shutdown it keeps flushing for at most `flushTimeout`; what is left stays in
/// the outbox for the next start.
public final class OutboxRelay: Service, Sendable {
    private enum Sweep { case none, others, all }

    private let database: ServiceDatabase
    private let publisher: any EventPublisher
    private let logger: Logger
    private let batchSize: Int
    private let maxInFlight: Int
    /// A sweep's claim: it is published alone (the next claim must follow its deletion), so
    /// it takes as many rows as the batches in flight would hold.
    private var sweepSize: Int { batchSize * maxInFlight }
    private let flushTimeout: Duration
    private let staleAfter: Double
    private let stopping = Atomic<Bool>(false)
    private let depthGauge = Gauge(label: "outbox_depth")
    /// See ``admit(lag:)``.
    private let admissionHigh: Int
    private let admissionLow: Int
    private let batches = ActivityCount()

    /// Batches published since start: an activity signal.
    public var batchCount: Int { batches.value }

    public init(database: ServiceDatabase, publisher: any EventPublisher, batchSize: Int = 500,
                maxInFlight: Int = 4, flushTimeout: Duration = .seconds(5), staleAfter: Double = 5,
                admissionHigh: Int = 1_500, admissionLow: Int = 500,
                logger: Logger = Logger(label: "stega.outbox")) {
        self.admissionHigh = admissionHigh
        self.admissionLow = min(admissionLow, admissionHigh)
        self.database = database
        self.publisher = publisher
        self.batchSize = batchSize
        self.maxInFlight = max(1, maxInFlight)
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

    /// A published batch's outcome, from the task that awaited its confirms.
    private struct Outcome: Sendable {
        let batch: [(Int64, EventEnvelope)]
        let error: (any Error)?
    }

    /// Where the tasks of batches in flight leave their outcomes.
    private final class Mailbox: Sendable {
        private let outcomes = Mutex<[Outcome]>([])
        func put(_ outcome: Outcome) { outcomes.withLock { $0.append(outcome) } }
        func take() -> [Outcome] { outcomes.withLock { o in defer { o = [] }; return o } }
    }

    private func loop() async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.measureDepthUntilCancelled() }
            await loop(group: &group)
            group.cancelAll()
        }
    }

    /// Keeps the `outbox_depth` gauge current, off the relay's path: every 100 ms while a few
    /// rows wait (it reads 0 within moments of the outbox emptying; measured once a second by
    /// the relay's loop, it went on showing the last rows of a burst for up to 2 s), once a
    /// second when none do or many do (a count of a large backlog is a scan of it).
    private func measureDepthUntilCancelled() async {
        while !Task.isCancelled {
            let depth = await measureDepth() ?? 0
            let pause: Duration = depth > 0 && depth <= 10_000 ? .milliseconds(100) : .seconds(1)
            do { try await Task.sleep(for: pause) } catch { return }
        }
    }

    private func loop(group: inout DiscardingTaskGroup) async {
        var failures = 0
        var flushDeadline: ContinuousClock.Instant?
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
        // Batches of committed rows published and not yet confirmed (their tasks ring the
        // bell when they are), and the first failure among them.
        let mailbox = Mailbox()
        var inFlight = 0
        var inFlightRows = 0
        var failure: (any Error)?
        defer { database.admission.open() }
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
        /// Takes the outcomes of batches in flight: the confirmed ones are deleted.
        func settle() {
            for outcome in mailbox.take() {
                inFlight -= 1
                inFlightRows -= outcome.batch.count
                if let error = outcome.error {
                    if failure == nil { failure = error }
                } else {
                    published(outcome.batch, afterFailures: &failures)
                }
            }
        }
        /// After a failed publish: every row not confirmed is in the table, claimed by this
        /// relay, and the sweep publishes them in order, after a back-off.
        func failed(_ error: any Error, rows: Int) async {
            failures += 1
            committed.removeAll()
            enterSweepOfAll(&sweep, &lastClaim)
            let delay = min(2.0, 0.1 * pow(2.0, Double(min(failures, 8))))
            if failures == 1 || failures % 20 == 0 {
                logger.warning("outbox publish failed; will retry", metadata: [
                    "error": "\(error)", "outbox.batch": "\(rows)", "attempt": "\(failures)",
                ])
            }
            // A sleep, not the bell: every write accepted during an outage rings it, and
            // would cut the back-off short.
            try? await Task.sleep(for: .milliseconds(Int64(delay * Double.random(in: 500...1000))))
        }
        while true {
            if stopping.load(ordering: .relaxed), flushDeadline == nil {
                flushDeadline = .now + flushTimeout
            }
            if let deadline = flushDeadline, ContinuousClock.now >= deadline { break }
            if Task.isCancelled { break }
            settle()
            if failure == nil {
                let came = takeCommitted().came
                admit(lag: sweep == .none ? committed.count + inFlightRows : nil)
                // Idle, or 5 s since the last sweep: a sweep for rows other processes left.
                if sweep == .none, (waited && !came) || ContinuousClock.now - swept >= .seconds(5) { sweep = .others }
                waited = false
            } else {
                admit(lag: nil)
            }
            // The batches in flight end first (confirmed, or failed too) before the relay deals
            // with a failure or sweeps (both go by the table), or sends a batch beyond the cap.
            if inFlight > 0, failure != nil || sweep != .none || (!committed.isEmpty && inFlight >= maxInFlight) {
                await database.outboxBell.wait(timeout: .seconds(1))
                continue
            }
            if let error = failure {
                failure = nil
                await failed(error, rows: committed.count)
                continue
            }
            if sweep != .none {
                // While the relay sweeps its own rows, new ones stay in the table; the feed
                // opens again for the last claims, so none committed meanwhile is missed.
                var feedWasOpen = true
                if sweep == .all {
                    feedWasOpen = database.outboxFeedOpen
                    if !feedWasOpen, lastClaim < sweepSize { database.outboxFeedOpen = true }
                }
                let batch: [(Int64, EventEnvelope)]
                do {
                    batch = try await database.claimOutboxRows(limit: sweepSize, includeOwn: sweep == .all,
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
                // A sweep's batch is published alone: the next claim follows its deletion.
                batches.increment()
                do {
                    try await publisher.publish(batch.map(\.1))
                    published(batch, afterFailures: &failures)
                } catch {
                    await failed(error, rows: batch.count)
                }
            } else if !committed.isEmpty {
                // Batches of committed rows do not wait for the confirms of the ones before.
                let batch = Array(committed.prefix(batchSize))
                committed.removeFirst(batch.count)
                batches.increment()
                inFlight += 1
                inFlightRows += batch.count
                group.addTask { [publisher, database] in
                    var error: (any Error)?
                    do { try await publisher.publish(batch.map(\.1)) } catch let e { error = e }
                    mailbox.put(Outcome(batch: batch, error: error))
                    database.outboxBell.ring()
                }
            } else {
                if flushDeadline != nil, inFlight == 0 { break }
                await database.outboxBell.wait(timeout: .seconds(1))
                waited = inFlight == 0
            }
        }
        // Stopping: what is still in flight is confirmed (and deleted) or stays for next time.
        let deadline = ContinuousClock.now + .seconds(2)
        while inFlight > 0, ContinuousClock.now < deadline {
            await database.outboxBell.wait(timeout: .milliseconds(100))
            settle()
        }
        try? await database.commitOutboxRemovals()
        let left = await measureDepth() ?? -1
        logger.info("outbox relay stopped", metadata: ["outbox.depth": "\(left)"])
    }

    /// Commands wait (``WriteAdmission``) while more than `admissionHigh` committed rows are
    /// waiting in memory or in flight, until `admissionLow` are: the relay stays on its
    /// pipelined in-memory path (below ``OutboxFeed/limit``) and the outbox drains within
    /// moments of a burst. `nil` (a sweep, or a failure being dealt with): commands go through.
    private func admit(lag: Int?) {
        guard let lag else { return database.admission.open() }
        if lag >= admissionHigh {
            database.admission.close()
        } else if lag <= admissionLow {
            database.admission.open()
        }
    }

    /// A batch the broker took: deleted from the outbox (in the next shared transaction).
    private func published(_ batch: [(Int64, EventEnvelope)], afterFailures failures: inout Int) {
        database.removeFromOutbox(batch.map(\.0))
        // One counter update per routing key and batch, not per event.
        for (key, count) in Dictionary(batch.map { ($0.1.routingKey, 1) }, uniquingKeysWith: +) {
            Counter(label: "events_published_total", dimensions: [("routing_key", key)]).increment(by: count)
        }
        if failures > 0 { logger.info("outbox publishing again", metadata: ["outbox.batch": "\(batch.count)"]) }
        failures = 0
        guard logger.logLevel <= .trace else { return }
        for (_, envelope) in batch {
            logger.trace("published", metadata: [
                "amqp.routing_key": "\(envelope.routingKey)",
                "bus.event_id": "\(envelope.eventId.lowercaseText)",
                "bus.correlation_id": "\(envelope.correlationId ?? "")",
            ])
        }
    }

    /// Sweeps every row this relay claimed, in order; the feed stays closed meanwhile.
    private func enterSweepOfAll(_ sweep: inout Sweep, _ lastClaim: inout Int) {
        database.outboxFeedOpen = false
        sweep = .all
        lastClaim = sweepSize
    }

    /// Sets the `outbox_depth` gauge (rows waiting to be published) and returns it.
    private func measureDepth() async -> Int? {
        let depth = try? await database.pool.read { db in try Outbox.depth(in: db) }
        if let depth { depthGauge.record(depth) }
        return depth
    }
}
