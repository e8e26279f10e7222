import Dispatch
import GRDB
import Synchronization

/// Checkpoints a database's WAL on a queue of its own, instead of in the commit that found
/// the WAL long enough.
///
/// SQLite's automatic checkpoint runs inside `COMMIT`, before the commit returns: the copy of
/// the WAL's pages into the database and two `fdatasync` calls (0.4–0.6 ms each here), while
/// the writes of that transaction, and the requests waiting for them, wait. The api and the
/// worker append to one WAL all the time, so it is seldom reset, and SQLite would checkpoint
/// at every commit past the threshold (145 `fdatasync` a second in returns-api at 1,450
/// requests/s). Installed on the writer connection, the WAL hook replaces the automatic
/// checkpoint: each time the WAL grows by `threshold` frames (SQLite's default, 1,000 pages),
/// a checkpoint runs on this queue, on a connection of its own. Durability does not change:
/// with `synchronous = NORMAL` commits are not synced, checkpoints are.
final class WALCheckpointer: Sendable {
    static let threshold: Int32 = 1_000
    static let restartThreshold = 4_000
    static let inlineThreshold: Int32 = 8_000
    /// Passive checkpoints do not bound the WAL when two processes write: the WAL starts again
    /// from its beginning only at a write that begins after every frame was copied, and the
    /// other process's next write has mostly begun by then (with both checkpoint queues held,
    /// 8,000 writes of two writers left a WAL of 41,000+ frames, all they wrote). Past this
    /// many frames the commit runs a restart checkpoint itself, trying again while the other
    /// process's commit runs one: the writers stop appending, the checkpoint takes the write
    /// lock and waits for the readers of the WAL (the writer's busy handler: 10 s at most),
    /// and the next write starts the WAL again (10,010 frames at most in that test, with or
    /// without CPU hogs). Only when the queue has fallen far behind.
    static let inlineRestartThreshold: Int32 = 10_000

    private let path: String
    private let queue = DispatchQueue(label: "stega.sqlite.checkpoint", qos: .utility)
    /// A checkpoint is asked for and has not started yet.
    private let requested = Atomic<Bool>(false)
    /// The checkpointer's connection, used on `queue` only (opened at the first checkpoint).
    private let connection = Mutex<CheckpointConnection?>(nil)
    private let runs = Atomic<Int>(0)
    /// `threshold`s of frames in the WAL at the last commit.
    private let lastBucket = Atomic<Int>(0)
    /// The WAL's length (frames) at the last commit that asked for a checkpoint.
    private let walFrames = Atomic<Int>(0)

    /// Checkpoints run so far (tests).
    var checkpointCount: Int { runs.load(ordering: .relaxed) }

    /// Holds the queue's checkpoints back until `body` returns (tests: a queue that falls behind).
    func withQueueHeld<T>(_ body: () async throws -> T) async rethrows -> T {
        queue.suspend()
        defer { queue.resume() }
        return try await body()
    }

    init(path: String) { self.path = path }

    /// Makes `db` (the writer connection) ask for checkpoints instead of running them. The
    /// queue can fall behind (starved of CPU under a long ingest, or its restarts refused by
    /// long reads): past `inlineThreshold` frames the commit checkpoints itself, as SQLite's
    /// own hook did past 1,000, and past `inlineRestartThreshold` restarts the WAL, so the WAL
    /// stays bounded.
    func install(on db: Database) {
        WALHook.install(on: db, checkpointer: self)
    }

    /// Asks for a checkpoint once per `threshold` frames the WAL grows by (a WAL that two
    /// processes keep appending to is seldom reset at once: SQLite's own asked at every commit
    /// past the threshold then). One at a time; a request while one runs starts the next.
    func request(frames: Int) {
        let bucket = frames / Int(Self.threshold)
        guard lastBucket.exchange(bucket, ordering: .relaxed) != bucket, bucket > 0 else { return }
        walFrames.store(frames, ordering: .relaxed)
        guard !requested.exchange(true, ordering: .acquiringAndReleasing) else { return }
        queue.async { [self] in
            requested.store(false, ordering: .releasing)
            checkpoint()
        }
    }

    /// Drops the checkpointer connection's page cache.
    func releaseMemory() {
        queue.async { [self] in
            connection.withLock { $0?.releaseMemory() }
        }
    }

    private func checkpoint() {
        connection.withLock { connection in
            if connection == nil { connection = CheckpointConnection(path: path) }
            guard let open = connection.take() else { return }
            // Passive: every frame no reader still needs, without holding anyone back (the
            // copy and the two syncs). Busy: another process checkpoints; the next request
            // tries again.
            open.checkpoint(restart: false)
            // A WAL starts again from its beginning only at a write that begins once every
            // frame is in the database, which two processes writing all the time seldom leave
            // room for. Past `restartThreshold` frames, a restart checkpoint copies what came in
            // meanwhile holding the writers back (about a millisecond) and waits for the
            // readers of the WAL; the next write then starts it again.
            if walFrames.load(ordering: .relaxed) >= Self.restartThreshold { open.checkpoint(restart: true) }
            connection = consume open
            runs.add(1, ordering: .relaxed)
        }
    }
}
