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
/// A sweep claims rows a batch at a time, each claim after the last row of the one before,
/// and publishes them pipelined like committed ones.
///
/// Batches of committed rows do not wait for the confirms of the ones before (up to
/// `maxInFlight` at once): with a publish per batch awaited in turn, an event committed while
/// a batch waited for the broker's disk sync waited too. A sweep begins only with nothing in
/// flight; after a failure the relay lets the batches in flight end, then sweeps (a batch
/// confirmed after an earlier one failed has gone out before that one is published again).
///
/// While too many committed rows wait in memory or for their confirms (the broker takes
/// messages more slowly than the writes come), the relay holds new commands back at
/// ``ServiceDatabase/admission``.
///
/// On graceful shutdown it keeps flushing for at most `flushTimeout`; what is left stays in
/// the outbox for the next start.
///
/// Every decision is the ``StateMachine``'s (OutboxRelay+StateMachine.swift, tested without
/// I/O); this type does the I/O it asks for.
public final class OutboxRelay: Service, Sendable {
    private let database: ServiceDatabase
    private let publisher: any EventPublisher
    private let logger: Logger
    private let staleAfter: Double
    /// A fresh state machine with this relay's limits, at a start time.
    private let makeMachine: @Sendable (ContinuousClock.Instant) -> StateMachine
    private let stopping = Atomic<Bool>(false)
    private let depthGauge = Gauge(label: "outbox_depth")
    private let batches = ActivityCount()

    /// Batches published since start: an activity signal.
    public var batchCount: Int { batches.value }

    public init(database: ServiceDatabase, publisher: any EventPublisher, batchSize: Int = 500,
                maxInFlight: Int = 4, flushTimeout: Duration = .seconds(5), staleAfter: Double = 5,
                admissionHigh: Int = 1_500, admissionLow: Int = 500,
                logger: Logger = Logger(label: "stega.outbox")) {
        self.database = database
        self.publisher = publisher
        self.staleAfter = staleAfter
        makeMachine = { now in
            StateMachine(batchSize: batchSize, maxInFlight: maxInFlight, feedLimit: OutboxFeed.limit,
                         admissionHigh: admissionHigh, admissionLow: admissionLow, flushTimeout: flushTimeout, now: now)
        }
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
        let batch: [Row]
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
    /// rows wait (so it reads 0 within moments of the outbox emptying), once a second when
    /// none do or many do (a count of a large backlog is a scan of it).
    private func measureDepthUntilCancelled() async {
        while !Task.isCancelled {
            let depth = await measureDepth() ?? 0
            let pause: Duration = depth > 0 && depth <= 10_000 ? .milliseconds(100) : .seconds(1)
            do { try await Task.sleep(for: pause) } catch { return }
        }
    }

    /// Runs the ``StateMachine`` and does what it decides: the feed, the table, the publisher,
    /// the bell, the clock.
    private func loop(group: inout DiscardingTaskGroup) async {
        var machine = makeMachine(.now)
        // Pipelined batches leave their outcomes here and ring the bell.
        let mailbox = Mailbox()
        var stopped = false
        defer { database.admission.open() }
        turns: while !Task.isCancelled {
            if !stopped, stopping.load(ordering: .relaxed) {
                machine.stop()
                stopped = true
            }
            for outcome in mailbox.take() { machine.settled(outcome.batch, error: outcome.error) }
            let decision = machine.next(taken: database.takeCommittedOutboxRows(), feedOpen: database.outboxFeedOpen,
                                        now: .now)
            apply(machine.takeEffects())
            // A batch goes out without being waited for: its outcome comes back by the mailbox.
            func publish(_ batch: [Row]) {
                batches.increment()
                group.addTask { [publisher, database] in
                    var error: (any Error)?
                    do { try await publisher.publish(batch.map(\.1)) } catch let e { error = e }
                    mailbox.put(Outcome(batch: batch, error: error))
                    database.outboxBell.ring()
                }
            }
            switch decision {
            case .finish:
                break turns
            case .publish(let batch):
                publish(batch)
            case .claim(let limit, let includeOwn, let after):
                let claimed: [Row]
                do {
                    claimed = try await database.claimOutboxRows(limit: limit, includeOwn: includeOwn, after: after,
                                                                  staleAfter: staleAfter)
                } catch {
                    if Task.isCancelled { break turns }
                    logger.error("outbox read failed", metadata: ["error": "\(error)"])
                    await pause(machine.claimFailed())
                    continue
                }
                if case .publish(let batch)? = machine.claimed(claimed, now: .now) { publish(batch) }
                apply(machine.takeEffects())
            case .wait, .backOff:
                await pause(decision)
            }
        }
        // Stopping: what is still in flight is confirmed (and deleted) or stays for next time.
        let deadline = ContinuousClock.now + .seconds(2)
        while machine.inFlight > 0, ContinuousClock.now < deadline {
            await database.outboxBell.wait(timeout: .milliseconds(100))
            for outcome in mailbox.take() { machine.settled(outcome.batch, error: outcome.error) }
            apply(machine.takeEffects())
        }
        try? await database.commitOutboxRemovals()
        let left = await measureDepth() ?? -1
        logger.info("outbox relay stopped", metadata: ["outbox.depth": "\(left)"])
    }

    /// Waits as `decision` says: for the bell, or (a back-off) for a time the bell does not cut
    /// short — every write accepted during an outage rings it.
    private func pause(_ decision: StateMachine.Decision) async {
        switch decision {
        case .wait(let timeout):
            await database.outboxBell.wait(timeout: timeout)
        case .backOff(let longest):
            try? await Task.sleep(for: longest * Double.random(in: 0.5...1))
        default:
            break
        }
    }

    /// Applies the state machine's effects.
    private func apply(_ effects: [StateMachine.Effect]) {
        for effect in effects {
            switch effect {
            case .published(let batch):
                published(batch)
            case .feed(let open):
                database.outboxFeedOpen = open
            case .admission(let open):
                if open { database.admission.open() } else { database.admission.close() }
            case .publishFailed(let error, let rows, let attempt):
                if attempt == 1 || attempt % 20 == 0 {
                    logger.warning("outbox publish failed; will retry", metadata: [
                        "error": "\(error)", "outbox.batch": "\(rows)", "attempt": "\(attempt)",
                    ])
                }
            case .publishingAgain(let rows):
                logger.info("outbox publishing again", metadata: ["outbox.batch": "\(rows)"])
            }
        }
    }

    /// A batch the broker took: deleted from the outbox (in the next shared transaction).
    private func published(_ batch: [Row]) {
        database.removeFromOutbox(batch.map(\.0))
        // One counter update per routing key and batch, not per event.
        for (key, count) in Dictionary(batch.map { ($0.1.routingKey, 1) }, uniquingKeysWith: +) {
            Counter(label: "events_published_total", dimensions: [("routing_key", key)]).increment(by: count)
        }
        guard logger.logLevel <= .trace else { return }
        for (_, envelope) in batch {
            logger.trace("published", metadata: [
                "amqp.routing_key": "\(envelope.routingKey)",
                "bus.event_id": "\(envelope.eventId.lowercaseText)",
                "bus.correlation_id": "\(envelope.correlationId ?? "")",
            ])
        }
    }

    /// Sets the `outbox_depth` gauge (rows waiting to be published) and returns it.
    private func measureDepth() async -> Int? {
        let depth = try? await database.outboxDepth()
        if let depth { depthGauge.record(depth) }
        return depth
    }
}
