import CGlibc
import Foundation
import ServiceLifecycle
import Synchronization

/// glibc gives each thread that allocates an arena of its own (up to 8 per core); the
/// dispatch pool's threads then keep memory the process no longer uses. Two arenas keep the
/// resident size of every process near its working set, unless `MALLOC_ARENA_MAX` says
/// otherwise (set in the environment, glibc reads it itself).
///
/// Blocks of 128 KiB or more come from `mmap` and go back to the system when freed: glibc's
/// default starts there but raises the threshold each time such a block is freed (up to
/// 32 MiB), after which large buffers — a 500-symbol matrix document, a batch of decoded
/// events — are carved from the arenas and stay resident as fragments once freed (after a
/// 500-symbol ingest, correlations-api keeps 45–65 MB with glibc's default, 39 MB with it fixed).
/// `MALLOC_MMAP_THRESHOLD_` overrides it.
public enum MemorySetup {
    public static func limitArenas(_ arenas: Int32 = 2, mmapThreshold: Int32 = 128 * 1024) {
        let environment = ProcessInfo.processInfo.environment
        if environment["MALLOC_ARENA_MAX"] == nil {
            _ = mallopt(M_ARENA_MAX, arenas)
        }
        if environment["MALLOC_MMAP_THRESHOLD_"] == nil {
            _ = mallopt(M_MMAP_THRESHOLD, mmapThreshold)
        }
    }

    /// Hands freed memory back to the system (`malloc_trim`).
    static func trim() { _ = malloc_trim(0) }
}

/// Gives memory back to the system once a burst of work is over: every half second it looks
/// at an activity count, and when the count stopped moving after it moved, drops the caches
/// `release` names (SQLite's page caches and idle connections), then trims (at most every
/// 5 seconds). One per process, fed by everything that works: HTTP requests, relay batches,
/// handled events.
struct MemoryTrimmer: Service {
    let activity: @Sendable () -> Int
    var release: @Sendable () -> Void = {}

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
                    release()
                    // The caches go on their connections' queues, after what runs there.
                    try? await Task.sleep(for: .milliseconds(50))
                    MemorySetup.trim()
                }
                last = now
            }
        }
    }
}

/// A counter shared by copies of a struct: an activity signal.
public final class ActivityCount: Sendable {
    private let count = Atomic<Int>(0)
    public init() {}
    public func increment(by amount: Int = 1) { count.add(amount, ordering: .relaxed) }
    public var value: Int { count.load(ordering: .relaxed) }
}
