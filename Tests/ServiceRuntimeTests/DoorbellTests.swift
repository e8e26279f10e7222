import Foundation
import ServiceRuntime
import Synchronization
import Testing

@Suite("Doorbell")
struct DoorbellTests {
    @Test("a ring with nobody waiting is kept for the next wait, once")
    func ringKept() async {
        let bell = Doorbell()
        bell.ring()
        bell.ring()
        let start = ContinuousClock.now
        await bell.wait(timeout: .seconds(30))
        #expect(ContinuousClock.now - start < .seconds(10))
        // The two rings were one: the next wait waits (here until its time-out).
        let again = ContinuousClock.now
        await bell.wait(timeout: .milliseconds(300))
        #expect(ContinuousClock.now - again >= .milliseconds(100))
    }

    @Test("a ring wakes a waiting task long before its time-out")
    func ringWakes() async {
        let bell = Doorbell()
        // Rung from another thread while (most likely) the task waits; a ring before the
        // wait would be kept, so either way the wait ends at once, not after 30 s.
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.1) { bell.ring() }
        let start = ContinuousClock.now
        await bell.wait(timeout: .seconds(30))
        #expect(ContinuousClock.now - start < .seconds(10))
    }

    @Test("with no ring, a wait ends by its time-out, and waits after it get time-outs of their own")
    func timeouts() async {
        let bell = Doorbell()
        for _ in 0..<3 {
            let start = ContinuousClock.now
            await bell.wait(timeout: .milliseconds(200))
            let waited = ContinuousClock.now - start
            // Never forever. The bound is loose on purpose: the suites of this test process run
            // at once, and while others keep the cooperative pool's threads (two on two cores)
            // busy or blocked, the resumption of this task waits for one (5.0–6.8 s seen).
            #expect(waited < .seconds(30))
        }
    }

    @Test("two tasks waiting at once are both woken by a ring (a second waiter does not take the first one's place)")
    func twoWaiters() async {
        let bell = Doorbell()
        final class Count: Sendable { let value = Atomic<Int>(0) }
        let count = Count()
        // Not awaited: a waiter that is never woken must fail the test, not hang it.
        for _ in 0..<2 {
            Task {
                await bell.wait(timeout: .seconds(600))
                count.value.add(1, ordering: .relaxed)
            }
        }
        try? await Task.sleep(for: .milliseconds(200))
        bell.ring()
        let start = ContinuousClock.now
        while count.value.load(ordering: .relaxed) < 2, ContinuousClock.now - start < .seconds(20) {
            try? await Task.sleep(for: .milliseconds(10))
            // A waiter that began after the ring is woken by the next one.
            if ContinuousClock.now - start > .seconds(1) { bell.ring() }
        }
        #expect(count.value.load(ordering: .relaxed) == 2)
    }
}
