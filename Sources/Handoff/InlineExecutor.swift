import Foundation

/// A task executor that saves the thread hops work would otherwise make through Swift's
/// global pool when it passes between the threads of the C libraries and of the database.
///
/// A job of a task that prefers this executor, enqueued inside ``inline(_:)``, runs at once
/// on the thread that enqueued it, until its next suspension; any other job goes to the
/// global concurrent executor, as it would without the preference. The places that open it
/// are hand-offs: libmicrohttpd's thread starting a request's handler and the AMQP consumer
/// thread passing deliveries on (each runs up to its first real suspension — for a write, the
/// hand-off to the group commit); the writer resuming what its transaction carried; the
/// publisher thread resuming the relay once the broker confirmed. A POST is then MHD thread
/// → writer → MHD thread, instead of passing through the pool twice more, and the relay
/// runs where the commit or the confirm happened.
///
/// Whoever opens it must hold no lock the resumed code could take; code that may run there
/// must not block (it is someone else's thread) and must not call GRDB synchronously (the
/// writer's resumptions run inside its queue).
///
/// ```swift
/// InlineExecutor.inline {
///     Task(executorPreference: InlineExecutor.shared) { await handle(request) }
/// }
/// ```
public final class InlineExecutor: TaskExecutor {
    public static let shared = InlineExecutor()

    private init() {}

    public func enqueue(_ job: consuming ExecutorJob) {
        if InlineZone.isOpen {
            job.runSynchronously(on: asUnownedTaskExecutor())
        } else {
            globalConcurrentExecutor.enqueue(job)
        }
    }

    /// Runs `body`; jobs of tasks preferring this executor that it enqueues (a task it
    /// starts, a continuation it resumes) run at once on this thread, before `body` goes on.
    @discardableResult
    public static func inline<T>(_ body: () throws -> T) rethrows -> T {
        let wasOpen = InlineZone.isOpen
        InlineZone.set(true)
        defer { InlineZone.set(wasOpen) }
        return try body()
    }
}

/// A per-thread flag (`pthread_getspecific`): whether preferring jobs run inline here.
private enum InlineZone {
    static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    static var isOpen: Bool { pthread_getspecific(key) != nil }

    static func set(_ open: Bool) {
        pthread_setspecific(key, open ? UnsafeRawPointer(bitPattern: 1) : nil)
    }
}
