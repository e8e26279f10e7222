import Foundation
import ServiceLifecycle
import Synchronization

/// glibc gives each thread that allocates an arena of its own (up to 8 per core); the
/// dispatch pool's threads then keep memory the process no longer uses. Two arenas keep the
/// resident size of the api and worker near their working set (issue 6's RSS target), unless
/// `MALLOC_ARENA_MAX` says otherwise.
public enum MemorySetup {
    public static func limitArenas(_ arenas: Int32 = 2) {
        guard ProcessInfo.processInfo.environment["MALLOC_ARENA_MAX"] == nil else { return }
        _ = glibcMallopt(-8 /* M_ARENA_MAX, <malloc.h> */, arenas)
    }

    /// Hands freed memory back to the system (`malloc_trim`).
    static func trim() { _ = glibcMallocTrim(0) }
}

/// Gives memory back to the system once a burst of work is over: every half second it looks
/// at an activity count, and when the count stopped moving after it moved, trims (at most
/// every 5 seconds). One per process, fed by everything that works: HTTP requests, relay
/// batches, handled events.
struct MemoryTrimmer: Service {
    let activity: @Sendable () -> Int

    func run() async throws {
        // Ends quietly on shutdown (a thrown cancellation would count as a failure).
        await cancelWhenGracefulShutdown {
            var last = activity()
            var busy = false
            var lastTrim: ContinuousClock.Instant?
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(500))
                if Task.isCancelled { return }
                let now = activity()
                if now != last {
                    busy = true
                } else if busy, lastTrim.map({ ContinuousClock.now - $0 >= .seconds(5) }) ?? true {
                    busy = false
                    lastTrim = .now
                    MemorySetup.trim()
                }
                last = now
            }
        }
    }
}

/// A counter shared by copies of a struct: an activity signal.
final class ActivityCount: Sendable {
    private let count = Atomic<Int>(0)
    func increment() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}

// `mallopt(3)` and `malloc_trim(3)`: <malloc.h> is not part of Swift's Glibc module.
@_silgen_name("mallopt")
private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32

@_silgen_name("malloc_trim")
private func glibcMallocTrim(_ pad: Int) -> Int32
