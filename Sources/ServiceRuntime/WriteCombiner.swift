import Dispatch
import EventCatalog
import GRDB
import Handoff
import Synchronization

/// Group commit: writes that arrive while another is committing share the next transaction,
/// each in a savepoint of its own, so one that throws is rolled back alone and the others
/// commit. Each caller resumes once its transaction has committed (a 202 still means stored).
/// The same transaction deletes the outbox rows the relay has published since the last one;
/// after it commits, the outbox rows it added go to the relay's feed, in commit order.
/// One batch per turn on the writer queue, so other writes interleave under load.
///
/// A write submitted `alone` (a worker's batch of events: one transaction by design) gets a
/// transaction of its own, without a savepoint: a savepoint keeps the original of every page
/// its write changes in SQLite's statement journal, which is in memory (`temp_store =
/// MEMORY`) — 5 MB more peak memory in the correlations-worker when its batch, which rewrites
/// the stored rows of a window, happened to share a transaction with the relay's claim.
final class WriteCombiner: Sendable {
    struct Written: Sendable {
        /// The indices of the write's contexts that were not handled before (inbox): those
        /// its body ran for.
        var fresh: [Int]
        /// Outbox rows added, with their sequence numbers (the relay's feed).
        var rows: [(Int64, EventEnvelope)]
        /// Outbox rows claimed for a sweep of the relay.
        var claimed: [(Int64, EventEnvelope)] = []
    }

    typealias Work = @Sendable (Database) throws -> Written

    private struct Pending: Sendable {
        let work: Work
        let alone: Bool
        let continuation: CheckedContinuation<Written, any Error>
    }

    private struct State {
        var pending: [Pending] = []
        var deletions: [Int64] = []
        var scheduled = false
        /// A timer will commit the deletions if no write has by then.
        var deletionFlushArmed = false

        /// Whether deletions wait with no transaction and no timer coming: arm one.
        mutating func armDeletionFlush() -> Bool {
            guard !scheduled, !deletionFlushArmed, !deletions.isEmpty else { return false }
            deletionFlushArmed = true
            return true
        }
    }

    private let pool: DatabasePool
    /// Rung after a transaction that added outbox rows committed.
    private let bell: Doorbell
    /// Outbox rows committed, in commit order, for the relay.
    let feed = Mutex(OutboxFeed())
    private let state = Mutex(State())
    private let maxBatch: Int

    private let deletionDelay: DispatchTimeInterval

    init(pool: DatabasePool, bell: Doorbell, maxBatch: Int = 128, deletionDelay: DispatchTimeInterval = .milliseconds(20)) {
        self.pool = pool
        self.bell = bell
        self.maxBatch = maxBatch
        self.deletionDelay = deletionDelay
    }

    func submit(alone: Bool = false, _ work: @escaping Work) async throws -> Written {
        try await withCheckedThrowingContinuation { continuation in
            let schedule = state.withLock { state -> Bool in
                state.pending.append(Pending(work: work, alone: alone, continuation: continuation))
                defer { state.scheduled = true }
                return !state.scheduled
            }
            if schedule { scheduleBatch() }
        }
    }

    /// Deletes outbox rows in the next transaction; with no write within `deletionDelay`,
    /// in one of their own (a deletion alone is not worth a commit: under a steady trickle of
    /// writes, each one would otherwise cost a second transaction).
    func delete(_ seqs: [Int64]) {
        guard !seqs.isEmpty else { return }
        let arm = state.withLock { state -> Bool in
            state.deletions.append(contentsOf: seqs)
            return state.armDeletionFlush()
        }
        if arm { flushDeletionsLater() }
    }

    private func flushDeletionsLater() {
        DispatchQueue.global().asyncAfter(deadline: .now() + deletionDelay) { [self] in
            let schedule = state.withLock { state -> Bool in
                state.deletionFlushArmed = false
                guard !state.scheduled, !state.deletions.isEmpty else { return false }
                state.scheduled = true
                return true
            }
            if schedule { scheduleBatch() }
        }
    }

    /// `work` in a savepoint of the open transaction: its error rolls back its own changes
    /// and is its result. What GRDB's `inSavepoint` does, with the savepoint statements
    /// prepared once (it parses them on every call: a cost per write under group commit).
    /// Throws when the savepoint cannot be rolled back: the transaction is lost.
    private static func inSavepoint(_ db: Database, _ work: () throws -> Written) throws -> Result<Written, any Error> {
        try db.cachedStatement(sql: "SAVEPOINT write").execute()
        do {
            let written = try work()
            try db.cachedStatement(sql: "RELEASE SAVEPOINT write").execute()
            return .success(written)
        } catch {
            try db.cachedStatement(sql: "ROLLBACK TRANSACTION TO SAVEPOINT write").execute()
            try db.cachedStatement(sql: "RELEASE SAVEPOINT write").execute()
            return .failure(error)
        }
    }

    private func scheduleBatch() {
        pool.asyncWriteWithoutTransaction { [self] db in
            let (batch, deletions) = state.withLock { state -> ([Pending], [Int64]) in
                // The first write waiting: alone if it goes alone, else with the others that
                // may share (waiting writes are concurrent: no order among them to keep).
                var batch: [Pending] = []
                if state.pending.first?.alone == true {
                    batch = [state.pending.removeFirst()]
                } else {
                    var rest: [Pending] = []
                    for pending in state.pending {
                        if !pending.alone, batch.count < maxBatch { batch.append(pending) } else { rest.append(pending) }
                    }
                    state.pending = rest
                }
                defer { state.deletions.removeAll() }
                return (batch, state.deletions)
            }
            var results = [Result<Written, any Error>]()
            var failed = false
            var added = false
            do {
                try db.inTransaction(.immediate) {
                    try Outbox.remove(deletions, in: db)
                    results = batch.count == 1
                        ? [.success(try batch[0].work(db))]  // alone: its error rolls back the transaction
                        : try batch.map { pending in try Self.inSavepoint(db) { try pending.work(db) } }
                    return .commit
                }
                added = feed.withLock { feed -> Bool in
                    var added = false
                    for case .success(let written) in results where !written.rows.isEmpty {
                        feed.add(written.rows)
                        added = true
                    }
                    return added
                }
            } catch {
                results = batch.map { _ in .failure(error) }
                failed = true
                // Not deleted: kept for the next transaction (a row left behind would only be
                // published again), which the next write or deletion starts.
                if !deletions.isEmpty { state.withLock { $0.deletions.insert(contentsOf: deletions, at: 0) } }
            }
            // A request waiting for this commit goes on here, up to its next suspension:
            // its response is built and its connection resumed without another thread hop
            // (see `InlineExecutor`; no lock is held, and nothing there calls GRDB synchronously).
            // The relay too, once they are answered: it takes the rows in memory and hands
            // them to the publisher thread (it never waits here; see `OutboxRelay`).
            InlineExecutor.inline {
                for (pending, result) in zip(batch, results) { pending.continuation.resume(with: result) }
                if added { bell.ring() }
            }
            // Deletions asked for meanwhile wait for the next write, or the timer.
            let (more, arm) = state.withLock { state -> (Bool, Bool) in
                guard state.pending.isEmpty else { return (true, false) }
                state.scheduled = false
                return (false, !failed && state.armDeletionFlush())
            }
            if more { scheduleBatch() }
            if arm { flushDeletionsLater() }
        }
    }
}
