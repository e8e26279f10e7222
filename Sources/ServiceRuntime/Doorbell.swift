import Dispatch
import Synchronization

/// Wakes the tasks waiting; a ring with nobody waiting is kept for the next wait.
///
/// A wait costs a lock and a continuation: its timeout comes from one timer shared by every
/// wait, armed at most once per `timeout`, so a waiter may wake early (nothing rang) — the
/// caller loops anyway. (A timer task per wait cost two task creations and a cancellation
/// on every ring: under a steady trickle of writes, a large part of the relay's CPU.)
/// A process has one waiter, its relay; tests run an api's and a worker's relays on one store,
/// and a second waiter must not take the first one's place (it would never wake again).
public final class Doorbell: Sendable {
    private struct State {
        var rung = false
        var waiters: [CheckedContinuation<Void, Never>] = []
        var timerArmed = false

        mutating func takeWaiters() -> [CheckedContinuation<Void, Never>] {
            defer { waiters = [] }
            return waiters
        }
    }

    private let state = Mutex(State())

    public init() {}

    /// Wakes the waiters, or lets the next ``wait(timeout:)`` return at once.
    public func ring() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            if state.waiters.isEmpty { state.rung = true }
            return state.takeWaiters()
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Waits for a ring, at most about `timeout` (possibly less).
    public func wait(timeout: Duration) async {
        await withCheckedContinuation { continuation in
            let (resumeNow, armTimer) = state.withLock { state -> (Bool, Bool) in
                if state.rung {
                    state.rung = false
                    return (true, false)
                }
                state.waiters.append(continuation)
                defer { state.timerArmed = true }
                return (false, !state.timerArmed)
            }
            if resumeNow { continuation.resume() }
            if armTimer {
                let (seconds, attoseconds) = timeout.components
                let nanoseconds = Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000)
                DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(nanoseconds)) { [self] in
                    let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
                        state.timerArmed = false
                        return state.takeWaiters()
                    }
                    for waiter in waiters { waiter.resume() }
                }
            }
        }
    }
}
