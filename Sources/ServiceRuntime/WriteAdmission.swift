import Dispatch
import Metrics
import Synchronization

/// Backpressure on commands while the outbox relay falls behind a broker that is taking
/// its messages: the relay closes the gate when more rows wait in its memory pipeline than
/// `OutboxRelay` allows, and opens it once they are down again. A command waits at the gate
/// before its transaction — at most `maxWait`, after which it goes through anyway — so a
/// burst the broker cannot absorb slows writers down instead of growing the outbox without
/// bound. While the broker is unreachable or the relay sweeps the table (after an outage),
/// the gate stays open: writes are accepted into the outbox, as DESIGN.md promises.
///
/// The time limit is each command's own: the gate stays closed for the others (opened for
/// everyone after `maxWait`, a stalled relay's backlog of waiting writers would come in at
/// once, past the relay's in-memory limit, and the outbox would grow without bound).
///
/// Event handlers (the worker) are not held here: their pace is the queue's prefetch.
public final class WriteAdmission: Sendable {
    private struct State {
        var closed = false
        var nextWaiter = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Mutex(State())
    private let maxWait: DispatchTimeInterval
    private let waits = Counter(label: "write_admission_waits_total")

    public init(maxWait: DispatchTimeInterval = .seconds(1)) {
        self.maxWait = maxWait
    }

    /// Whether commands wait now.
    public var isClosed: Bool { state.withLock { $0.closed } }

    /// Returns at once while the gate is open; otherwise once it opens, or after `maxWait`.
    public func admit() async {
        guard isClosed else { return }
        waits.increment()
        await withCheckedContinuation { continuation in
            let waiter = state.withLock { state -> Int? in
                guard state.closed else { return nil }
                state.nextWaiter += 1
                state.waiters[state.nextWaiter] = continuation
                return state.nextWaiter
            }
            guard let waiter else { return continuation.resume() }
            DispatchQueue.global().asyncAfter(deadline: .now() + maxWait) { [self] in
                state.withLock { $0.waiters.removeValue(forKey: waiter) }?.resume()
            }
        }
    }

    /// Holds commands from now on.
    func close() {
        state.withLock { $0.closed = true }
    }

    /// Lets every waiting command go.
    func open() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            guard state.closed else { return [] }
            state.closed = false
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        waiters.forEach { $0.resume() }
    }
}
