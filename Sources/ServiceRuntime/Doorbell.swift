import Dispatch
import Synchronization

/// Wakes one waiting task; a ring with nobody waiting is kept for the next wait.
///
/// A wait costs a lock and a continuation: its timeout comes from one timer shared by every
/// wait, armed at most once per `timeout`, so a waiter may wake early (nothing rang) — the
/// caller loops anyway. (A timer task per wait cost two task creations and a cancellation
/// on every ring: under a steady trickle of writes, a large part of the relay's CPU.)
public final class Doorbell: Sendable {
    private struct State {
        var rung = false
        var waiter: CheckedContinuation<Void, Never>?
        var timerArmed = false
    }

    private let state = Mutex(State())

    public init() {}

    /// Wakes the waiter, or lets the next ``wait(timeout:)`` return at once.
    public func ring() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.rung = true
            return nil
        }
        waiter?.resume()
    }

    /// Waits for a ring, at most about `timeout` (possibly less).
    public func wait(timeout: Duration) async {
        await withCheckedContinuation { continuation in
            let (resumeNow, armTimer) = state.withLock { state -> (Bool, Bool) in
                if state.rung {
                    state.rung = false
                    return (true, false)
                }
                state.waiter = continuation
                defer { state.timerArmed = true }
                return (false, !state.timerArmed)
            }
            if resumeNow { continuation.resume() }
            if armTimer {
                let (seconds, attoseconds) = timeout.components
                let nanoseconds = Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000)
                DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(nanoseconds)) { [self] in
                    let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                        state.timerArmed = false
                        defer { state.waiter = nil }
                        return state.waiter
                    }
                    waiter?.resume()
                }
            }
        }
    }
}
