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
/// Event handlers (the worker) are not held here: their pace is the queue's prefetch.
public final class WriteAdmission: Sendable {
    private struct State {
        var closed = false
        /// Counts closings, so the timer of an earlier one does not open a later one.
        var closings = 0
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())
    private let maxWait: DispatchTimeInterval
    private let waits = Counter(label: "write_admission_waits_total")

    public init(maxWait: DispatchTimeInterval = .seconds(1)) {
        self.maxWait = maxWait
    }

    /// Whether commands wait now.
    public var isClosed: Bool { state.withLock { $0.closed } }

    /// Returns at once while the gate is open; otherwise once it opens (at most `maxWait`).
    public func admit() async {
        guard isClosed else { return }
        waits.increment()
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                guard state.closed else { return true }
                state.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Holds commands from now on; it opens by itself after `maxWait` if not opened before.
    func close() {
        let closing = state.withLock { state -> Int? in
            guard !state.closed else { return nil }
            state.closed = true
            state.closings += 1
            return state.closings
        }
        guard let closing else { return }
        DispatchQueue.global().asyncAfter(deadline: .now() + maxWait) { [self] in
            open(ifStill: closing)
        }
    }

    /// Lets every waiting command go.
    func open() { open(ifStill: nil) }

    private func open(ifStill closing: Int?) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            guard state.closed, closing == nil || closing == state.closings else { return [] }
            state.closed = false
            defer { state.waiters = [] }
            return state.waiters
        }
        waiters.forEach { $0.resume() }
    }
}
