import EventCatalog
import Foundation
import MessageBus
import PostgresNIO
import Synchronization

/// Group commit on PostgreSQL, for commands: the writes waiting when a connection frees up
/// share one transaction — one `BEGIN`, their statements, one insert of all their outbox
/// rows, one `COMMIT` (one WAL flush) — instead of a transaction and a flush each. Half the
/// pool's connections (at least one) run such transactions at once; the rest stay for
/// reads, the relay and the worker.
///
/// PostgreSQL aborts a transaction at its first failing statement, and the statements of a
/// write are sent before its body returns, so a write that fails cannot be rolled back
/// alone: when a shared transaction fails, every write in it is run again in a transaction
/// of its own, and each gets its own outcome (a store that is down fails them all).
///
/// Measured (wrk -t2 -c32, one returns-api, this 2-core machine): 1,115 req/s with a
/// transaction per request (p50 28 ms); 2,228 with shared transactions; 3,633 once the rows
/// of a table from every write go in one statement (`PostgresSession.batch`); 4,070–4,090
/// with two or three shared transactions at once instead of four.
final class PostgresWriteCombiner: Sendable {
    /// One command's write: its body, on a session inside the shared transaction; it
    /// returns the indices of its contexts it ran for, and the envelopes to store in the
    /// outbox. It may run twice (alone after a shared transaction failed): nothing of the
    /// first run is left in it.
    typealias Work = @Sendable (PostgresSession) throws -> (fresh: [Int], envelopes: [EventEnvelope])
    /// `rows` is nil when the write committed but its outbox rows could not be read back:
    /// they are in the table, claimed by this relay, which must sweep them from there.
    typealias Written = (fresh: [Int], rows: [(Int64, EventEnvelope)]?)

    private struct Pending: Sendable {
        let work: Work
        let continuation: CheckedContinuation<Written, any Error>
    }

    private let store: PostgresStore
    private let relayId: String
    private let maxBatch: Int
    private let concurrency: Int
    private let state = Mutex((pending: [Pending](), running: 0))
    /// Published outbox rows to delete, and whether a deletion of their own is on its way:
    /// the next shared transaction deletes them too (see ``removeFromOutbox(_:)``).
    private let deletions = Mutex(Deletions())

    private struct Deletions: ~Copyable {
        var seqs: [Int64] = []
        var armed = false
        /// Shared transactions deleting rows, not yet ended.
        var inFlight = 0
        /// Sweeps waiting for them to end.
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    init(store: PostgresStore, relayId: String, maxBatch: Int = 128) {
        self.store = store
        self.relayId = relayId
        self.maxBatch = maxBatch
        concurrency = max(1, store.settings.poolSize / 2)
    }

    /// Runs `work` in the next shared transaction; returns its outbox rows once committed.
    func submit(_ work: @escaping Work) async throws -> Written {
        try await withCheckedThrowingContinuation { continuation in
            let start = state.withLock { state -> Bool in
                state.pending.append(Pending(work: work, continuation: continuation))
                guard state.running < concurrency else { return false }
                state.running += 1
                return true
            }
            if start { Task { await drain() } }
        }
    }

    /// Runs batches while writes wait; one of at most `poolSize` such loops.
    private func drain() async {
        while true {
            let batch = state.withLock { state -> [Pending] in
                let batch = Array(state.pending.prefix(maxBatch))
                state.pending.removeFirst(batch.count)
                if batch.isEmpty { state.running -= 1 }
                return batch
            }
            guard !batch.isEmpty else { return }
            await run(batch)
        }
    }

    /// Deletes published outbox rows: in the next shared transaction, or with no write coming,
    /// in a statement of their own within 20 ms.
    func removeFromOutbox(_ seqs: [Int64]) {
        guard !seqs.isEmpty else { return }
        let arm = deletions.withLock { state -> Bool in
            state.seqs.append(contentsOf: seqs)
            defer { state.armed = true }
            return !state.armed
        }
        guard arm else { return }
        Task {
            try? await Task.sleep(for: .milliseconds(20))
            // A shared transaction since may have taken them: then there is nothing to do.
            let waiting = deletions.withLock { state -> Bool in
                if state.seqs.isEmpty { state.armed = false }
                return !state.seqs.isEmpty
            }
            if waiting { _ = try? await deletePublished { _ in } }
        }
    }

    /// Deletes the published rows waiting, then runs `more` on the same connection (a sweep's
    /// claim: it never takes again what was published); on failure the rows wait for the next try.
    func deletePublished<T: Sendable>(then more: @escaping @Sendable (PostgresSession) throws -> T) async throws -> T {
        // Rows a shared transaction is deleting are locked by it, and a claim skips them;
        // but its DELETE may not have reached the server yet: wait for it to end.
        await withCheckedContinuation { continuation in
            let now = deletions.withLock { state -> Bool in
                if state.inFlight == 0 { return true }
                state.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
        let seqs = takeDeletions(disarm: true)
        do {
            return try await store.withSession { session in
                try Outbox.remove(seqs, in: session)
                return try more(session)
            }
        } catch {
            restoreDeletions(seqs)
            throw error
        }
    }

    /// The rows to delete; for a shared transaction (`shared`), counted in flight until
    /// ``endDeletions(_:failed:)``.
    private func takeDeletions(disarm: Bool, shared: Bool = false) -> [Int64] {
        deletions.withLock { state -> [Int64] in
            let seqs = state.seqs
            state.seqs = []
            if disarm { state.armed = false }
            if shared && !seqs.isEmpty { state.inFlight += 1 }
            return seqs
        }
    }

    private func restoreDeletions(_ seqs: [Int64]) {
        guard !seqs.isEmpty else { return }
        deletions.withLock { $0.seqs.insert(contentsOf: seqs, at: 0) }
    }

    /// A shared transaction that took `seqs` ended (`failed`: they wait for the next try).
    private func endDeletions(_ seqs: [Int64], failed: Bool) {
        guard !seqs.isEmpty else { return }
        let waiters = deletions.withLock { state -> [CheckedContinuation<Void, Never>] in
            if failed { state.seqs.insert(contentsOf: seqs, at: 0) }
            state.inFlight -= 1
            guard state.inFlight == 0 else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        waiters.forEach { $0.resume() }
    }

    private func run(_ batch: [Pending]) async {
        // The rows published since the last transaction are deleted in this one (the 20 ms
        // timer then finds none); a failed transaction leaves them for the next.
        let deleting = takeDeletions(disarm: false, shared: true)
        do {
            // Every statement of the transaction is sent before the first wait: the rows, the
            // outbox rows, the deletions and the COMMIT reach the server together (or as one
            // statement, see `Outbox.submitAlone`).
            let appended = try await store.transaction(lazily: true) { [relayId] session in
                var done: [(fresh: [Int], envelopes: [EventEnvelope])] = []
                done.reserveCapacity(batch.count)
                for pending in batch { done.append(try pending.work(session)) }
                let envelopes = done.flatMap(\.envelopes)
                // Writes that only gathered rows (no query, nothing sent): one statement.
                guard session.inTransaction else {
                    return (done, Outbox.submitAlone(envelopes, claimedBy: relayId, deleting: deleting, in: session))
                }
                Outbox.sendRemove(deleting, in: session)
                return (done, try Outbox.submitAppend(envelopes, claimedBy: relayId, in: session))
            }
            endDeletions(deleting, failed: false)
            // Committed: whatever happens now, each write succeeded.
            guard let stored = try? appended.1.rows() else {
                for (pending, write) in zip(batch, appended.0) { pending.continuation.resume(returning: (write.fresh, nil)) }
                return
            }
            // Each write's rows, in order.
            var start = 0
            for (pending, write) in zip(batch, appended.0) {
                pending.continuation.resume(returning: (write.fresh, Array(stored[start..<start + write.envelopes.count])))
                start += write.envelopes.count
            }
        } catch let error as StoreUnavailable {
            endDeletions(deleting, failed: true)
            for pending in batch { pending.continuation.resume(throwing: error) }
        } catch {
            endDeletions(deleting, failed: true)
            guard batch.count > 1 else {
                batch[0].continuation.resume(throwing: error)
                return
            }
            // One of them failed, or the transaction did: each again, alone.
            for pending in batch {
                do {
                    let written = try await store.transaction { [relayId] session -> Written in
                        let write = try pending.work(session)
                        return (write.fresh, try Outbox.append(write.envelopes, claimedBy: relayId, in: session))
                    }
                    pending.continuation.resume(returning: written)
                } catch {
                    pending.continuation.resume(throwing: error)
                }
            }
        }
    }
}
