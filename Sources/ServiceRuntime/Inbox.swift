import Foundation
import GRDB
import MessageBus

/// The inbox table: the ids of the events a service has handled, so a redelivered event
/// changes nothing (handlers are idempotent by event id).
public enum Inbox {
    /// The table (migration `outbox-inbox`, with ``Outbox/schema``).
    static let schema = """
        CREATE TABLE IF NOT EXISTS inbox (
            event_id TEXT PRIMARY KEY,
            handled_at REAL NOT NULL
        );
        """

    /// Records `eventId` as handled in `db`'s transaction; `false` when it was already.
    static func markHandled(_ eventId: UUID, in db: Database) throws -> Bool {
        // One statement: an id on record is ignored, and whether a row went in says which.
        try DirectBinding.execute(
            db.cachedStatement(sql: "INSERT INTO inbox (event_id, handled_at) VALUES (?, ?) ON CONFLICT (event_id) DO NOTHING"),
            in: db) { row in
            row.bind(1, eventId.lowercaseText)
            row.bind(2, Date().timeIntervalSince1970)
        }
        return db.changesCount == 1
    }
}

// MARK: - PostgreSQL

import PostgresNIO

extension Inbox {
    /// The table in a service's PostgreSQL schema (migration `outbox-inbox`).
    static let postgresSchema = [
        "CREATE TABLE IF NOT EXISTS inbox (event_id TEXT PRIMARY KEY, handled_at DOUBLE PRECISION NOT NULL)",
    ]

    /// Records `eventIds` as handled in `session`'s transaction, in one statement; for each,
    /// whether it was new (an id twice in `eventIds` is new the first time only). A replica
    /// recording the same id at the same moment waits for that one's transaction, then finds
    /// it on record.
    static func markHandled(_ eventIds: [UUID], in session: PostgresSession) throws -> [Bool] {
        guard !eventIds.isEmpty else { return [] }
        let texts = eventIds.map(\.lowercaseText)
        var binds = PostgresBindings(capacity: 2)
        binds.append(texts)
        binds.append(Date().timeIntervalSince1970)
        var inserted = Set(try session.query("""
            INSERT INTO inbox (event_id, handled_at) SELECT id, $2 FROM unnest($1::text[]) AS ids(id)
            ON CONFLICT (event_id) DO NOTHING RETURNING event_id
            """, binds).map { try $0.column(0, as: String.self) })
        return texts.map { inserted.remove($0) != nil }
    }
}

extension Inbox {
    /// The indices of `contexts` to run (in order): those of commands, and those of events
    /// not handled before, which are recorded as handled in `session`'s transaction.
    static func fresh(_ contexts: [HandlerContext], in session: PostgresSession) throws -> [Int] {
        var next = try markHandled(contexts.compactMap(\.handledEventId), in: session).makeIterator()
        return contexts.indices.filter { contexts[$0].handledEventId == nil || next.next() == true }
    }
}
