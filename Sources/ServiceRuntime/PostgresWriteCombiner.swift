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
    typealias Written = (fresh: [Int], rows: [(Int64, EventEnvelope)])

    private struct Pending: Sendable {
        let work: Work
        let continuation: CheckedContinuation<Written, any Error>
    }

    private let store: PostgresStore
    private let relayId: String
    private let maxBatch: Int
    private let concurrency: Int
    private let state = Mutex((pending: [Pending](), running: 0))

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

    private func run(_ batch: [Pending]) async {
        do {
            let written = try await store.transaction { [relayId] session in
                var done: [(fresh: [Int], envelopes: [EventEnvelope])] = []
                done.reserveCapacity(batch.count)
                for pending in batch { done.append(try pending.work(session)) }
                let stored = try Outbox.append(done.flatMap(\.envelopes), claimedBy: relayId, in: session)
                // Each write's rows, in order.
                var out: [Written] = []
                var start = 0
                for write in done {
                    out.append((write.fresh, Array(stored[start..<start + write.envelopes.count])))
                    start += write.envelopes.count
                }
                return out
            }
            for (pending, written) in zip(batch, written) { pending.continuation.resume(returning: written) }
        } catch let error as StoreUnavailable {
            for pending in batch { pending.continuation.resume(throwing: error) }
        } catch {
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
