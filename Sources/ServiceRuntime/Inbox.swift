import Foundation
import GRDB

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
