import Foundation
import Handoff
import Synchronization
import Testing

/// Which thread ran what, and in which order.
private final class Trace: Sendable {
    private let entries = Mutex<[String]>([])
    func add(_ entry: String) { entries.withLock { $0.append(entry) } }
    var all: [String] { entries.withLock { $0 } }
}

private func threadID() -> UInt { UInt(pthread_self()) }

/// A value shared between threads.
private final class Shared<Value: Sendable>: Sendable {
    private let value: Mutex<Value>
    init(_ value: Value) { self.value = Mutex(value) }
    func set(_ new: Value) { value.withLock { $0 = new } }
    var get: Value { value.withLock { $0 } }
}

/// A continuation parked by a task, for another thread to resume.
private final class Parked: Sendable {
    let slot = Mutex<CheckedContinuation<Void, Never>?>(nil)
    func take() -> CheckedContinuation<Void, Never>? { slot.withLock { c in defer { c = nil }; return c } }
}

@Suite("InlineExecutor")
struct InlineExecutorTests {
    /// Runs `body` on a thread of its own and waits for it.
    private func onThread(_ body: @escaping @Sendable () -> Void) async {
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            Thread { body(); done.resume() }.start()
        }
    }

    @Test("a task started inside inline runs on the calling thread up to its first suspension, then resumes on the thread that resumes it, inside inline")
    func inlineStartAndResume() async throws {
        let trace = Trace()
        let parked = Parked()
        let finished = Shared(false)
        let starter = Shared<UInt>(0)
        let resumer = Shared<UInt>(0)
        await onThread {
            starter.set(threadID())
            InlineExecutor.inline {
                Task(executorPreference: InlineExecutor.shared) {
                    trace.add("started on \(threadID())")
                    await withCheckedContinuation { continuation in parked.slot.withLock { $0 = continuation } }
                    trace.add("resumed on \(threadID())")
                    finished.set(true)
                }
                trace.add("inline returned")
            }
        }
        // The task ran before `inline` returned, on the starting thread, and is parked now.
        #expect(trace.all == ["started on \(starter.get)", "inline returned"])
        let continuation = try #require(parked.take())
        await onThread {
            resumer.set(threadID())
            InlineExecutor.inline { continuation.resume() }
            // Resumed inside inline: the rest of the task ran before resume returned.
            trace.add("finished before resume returned: \(finished.get)")
        }
        #expect(trace.all == ["started on \(starter.get)", "inline returned",
                              "resumed on \(resumer.get)", "finished before resume returned: true"])
    }

    @Test("outside inline, a preferring task runs on the global executor, not on the thread that started it")
    func outsideInline() async throws {
        let ran = Shared<UInt?>(nil)
        let starter = Shared<UInt>(0)
        await onThread {
            starter.set(threadID())
            let (go, done) = (DispatchSemaphore(value: 0), DispatchSemaphore(value: 0))
            Task(executorPreference: InlineExecutor.shared) {
                _ = go.wait(timeout: .now() + 5)
                ran.set(threadID())
                done.signal()
            }
            // Had the task run inline, it would have run already (after waiting 5 s in vain).
            #expect(ran.get == nil)
            go.signal()
            done.wait()
        }
        let ranOn = try #require(ran.get)
        #expect(ranOn != starter.get)
    }

    @Test("inline nests and restores: after the inner block, the outer one still runs jobs inline; after both, none")
    func nesting() async throws {
        let order = Trace()
        await onThread {
            InlineExecutor.inline {
                InlineExecutor.inline { order.add("inner") }
                Task(executorPreference: InlineExecutor.shared) { order.add("task in outer") }
                order.add("outer after task")
            }
            let (go, done) = (DispatchSemaphore(value: 0), DispatchSemaphore(value: 0))
            Task(executorPreference: InlineExecutor.shared) {
                _ = go.wait(timeout: .now() + 5)
                order.add("task after both")
                done.signal()
            }
            order.add("after both")
            go.signal()
            done.wait()
        }
        #expect(order.all == ["inner", "task in outer", "outer after task", "after both", "task after both"])
    }
}
