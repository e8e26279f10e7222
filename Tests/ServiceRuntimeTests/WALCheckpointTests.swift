import Foundation
import GRDB
import MessageBus
@testable import ServiceRuntime
import Testing

@Suite("WAL checkpoints")
struct WALCheckpointTests {
    /// A database file of its own (removed by `done`), with a table `t (k, v)`; `databases`
    /// processes' worth of `ServiceDatabase`s on it.
    private func file(databases: Int) async throws -> (path: String, databases: [ServiceDatabase], done: () -> Void) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("wal-\(UUID().uuidString)")
        let path = dir.appendingPathComponent("t.sqlite").path
        let opened = try (0..<databases).map { _ in try ServiceDatabase(path: path) }
        try await opened[0].pool.write { db in try db.execute(sql: "CREATE TABLE IF NOT EXISTS t (k INTEGER, v BLOB)") }
        return (path, opened, { try? FileManager.default.removeItem(at: dir) })
    }

    /// A 16 KiB value: each commit that stores one adds five or more frames (overflow pages).
    private let value = Data(repeating: 7, count: 16_384)

    /// `count` commits by each of two databases at once (an api and its worker).
    private func insertTogether(_ count: Int, into one: ServiceDatabase, _ other: ServiceDatabase) async throws {
        async let a: Void = insert(count, rows: 0, into: one)
        async let b: Void = insert(count, rows: count, into: other)
        _ = try await (a, b)
    }

    /// `count` commits of one row each (keys from `first`), one after the other.
    private func insert(_ count: Int, rows first: Int, into database: ServiceDatabase) async throws {
        for i in 0..<count {
            try await database.writeSQLite(HandlerContext(metadata: .newOperation(), appId: "test")) { db in
                try db.execute(sql: "INSERT INTO t (k, v) VALUES (?, ?)", arguments: [first + i, value])
            }
        }
    }

    @Test("two writers on one file (an api and its worker): checkpoints run off the commits and the WAL stays bounded")
    func bounded() async throws {
        let (path, databases, done) = try await file(databases: 2)
        defer { done() }
        let (api, worker) = (databases[0], databases[1])
        // Far more frames than the bound below, written without pause by both.
        let writes = 4_000
        try await insertTogether(writes, into: api, worker)

        let frame = 4_096 + 24
        let written = 2 * writes * 5
        let wal = try FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as! Int
        #expect(api.checkpointer.checkpointCount + worker.checkpointer.checkpointCount > 0)
        // The queue restarts the WAL past 4,000 frames when it keeps up; when it is starved of
        // CPU (the whole test suite on two cores: 13,771 frames once, before the commits
        // restarted it themselves), the commit's own restart past 10,000 holds: that, and what
        // the other writer adds while it waits.
        #expect(wal <= (Int(WALCheckpointer.inlineRestartThreshold) + Int(WALCheckpointer.threshold)) * frame,
                "WAL of \(wal / frame) frames after \(written)+ written")
        #expect(try await worker.pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM t") } == 2 * writes)
        // The checkpoints copied the data into the database file itself.
        let file = try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int
        #expect(file > writes * value.count)
    }

    @Test("two writers and both checkpoint queues held: past the hard limit a commit restarts the WAL")
    func twoWritersQueuesHeld() async throws {
        let (path, databases, done) = try await file(databases: 2)
        defer { done() }
        let (api, worker) = (databases[0], databases[1])
        let writes = 4_000
        try await api.checkpointer.withQueueHeld {
            try await worker.checkpointer.withQueueHeld {
                try await insertTogether(writes, into: api, worker)
            }
        }
        let frame = 4_096 + 24
        let wal = try FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as! Int
        // The restart threshold and a commit or two: 10,010 frames in each of 12 runs here (six
        // with two CPU hogs); 41,000+ before the commits restarted the WAL themselves.
        #expect(wal <= (Int(WALCheckpointer.inlineRestartThreshold) + Int(WALCheckpointer.threshold)) * frame,
                "WAL of \(wal / frame) frames")
        #expect(try await api.pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM t") } == 2 * writes)
    }

    @Test("a checkpoint queue that falls behind: past 8,000 frames the commits checkpoint themselves")
    func queueBehind() async throws {
        let (path, databases, done) = try await file(databases: 1)
        defer { done() }
        let database = databases[0]
        let writes = 5_000  // 25,000+ frames
        try await database.checkpointer.withQueueHeld {
            try await insert(writes, rows: 0, into: database)
        }
        let frame = 4_096 + 24
        let wal = try FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as! Int
        #expect(wal <= (Int(WALCheckpointer.inlineThreshold) + 1_000) * frame, "WAL of \(wal / frame) frames")
        #expect(try await database.pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM t") } == writes)
    }
}
