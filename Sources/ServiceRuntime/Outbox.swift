import EventCatalog
import Foundation
import GRDB

/// The outbox table: events waiting to be published.
public enum Outbox {
    /// The table (migration `outbox-inbox`, with ``Inbox/schema``).
    static let schema = """
        CREATE TABLE IF NOT EXISTS outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL,
            routing_key TEXT NOT NULL,
            type TEXT NOT NULL,
            correlation_id TEXT,
            causation_id TEXT,
            app_id TEXT NOT NULL,
            timestamp REAL NOT NULL,
            schema_version INTEGER NOT NULL,
            traceparent TEXT,
            content_type TEXT NOT NULL,
            body BLOB NOT NULL,
            claimed_by TEXT,
            claimed_at REAL
        );
        """

    /// Appends `envelopes` (in order) in `db`'s transaction, claimed by `relay` when given,
    /// and returns them with their sequence numbers.
    @discardableResult
    public static func append(_ envelopes: [EventEnvelope], claimedBy relay: String? = nil,
                              in db: Database) throws -> [(Int64, EventEnvelope)] {
        guard !envelopes.isEmpty else { return [] }
        let insert = try db.cachedStatement(sql: """
            INSERT INTO outbox (event_id, routing_key, type, correlation_id, causation_id, app_id,
                                timestamp, schema_version, traceparent, content_type, body, claimed_by, claimed_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        let claimedAt = relay.map { _ in Date().timeIntervalSince1970 }
        var rows: [(Int64, EventEnvelope)] = []
        rows.reserveCapacity(envelopes.count)
        for e in envelopes {
            try DirectBinding.execute(insert, in: db) { row in
                row.bind(1, e.eventId.lowercaseText)
                row.bind(2, e.routingKey)
                row.bind(3, e.type)
                row.bind(4, e.correlationId)
                row.bind(5, e.causationId)
                row.bind(6, e.appId)
                row.bind(7, e.timestamp.timeIntervalSince1970)
                row.bind(8, e.schemaVersion)
                row.bind(9, e.traceparent)
                row.bind(10, e.contentType)
                row.bind(11, e.body)
                row.bind(12, relay)
                row.bind(13, claimedAt)
            }
            rows.append((db.lastInsertedRowID, e))
        }
        return rows
    }

    /// Claims for a sweep of `relay` up to `limit` rows after row `after`, oldest first, and
    /// returns them: rows nobody claimed, rows whose claim is older than `staleAfter` seconds,
    /// and — with `includeOwn` — every row `relay` claimed (when it wrote them, or in an
    /// earlier sweep). Swept rows are marked `<relay>.sweep`, apart from the rows the relay has
    /// in memory. A sweep passes its last claim's last row as `after`: the rows it has in
    /// flight are not deleted yet, and must not be claimed again.
    static func claim(limit: Int, relay: String, includeOwn: Bool, after: Int64 = 0, staleAfter: Double,
                      in db: Database) throws -> [(Int64, EventEnvelope)] {
        let now = Date().timeIntervalSince1970
        let sweep = relay + ".sweep"
        try db.cachedStatement(sql: """
            UPDATE outbox SET claimed_by = ?, claimed_at = ?
            WHERE seq IN (SELECT seq FROM outbox
                          WHERE seq > ?
                            AND (claimed_by IS NULL
                                 OR (claimed_by IN (?, ?) AND ?)
                                 OR (claimed_by NOT IN (?, ?) AND claimed_at < ?))
                          ORDER BY seq LIMIT ?)
            """).execute(arguments: [sweep, now, after, relay, sweep, includeOwn, relay, sweep, now - staleAfter, limit])
        // Columns by position, not by name: GRDB lowercases a name on every lookup, a large part
        // of a sweep's CPU with thousands of rows (a backlog after an outage).
        let rows = try Row.fetchAll(
            db.cachedStatement(sql: """
                SELECT seq, event_id, routing_key, type, correlation_id, causation_id, app_id, timestamp,
                       schema_version, traceparent, content_type, body
                FROM outbox WHERE claimed_by = ? AND seq > ? ORDER BY seq LIMIT ?
                """),
            arguments: [sweep, after, limit])
        return rows.compactMap { row in
            guard let id = UUID(text: row[1]) else { return nil }
            let envelope = EventEnvelope(
                eventId: id, routingKey: row[2], type: row[3],
                correlationId: row[4], causationId: row[5], appId: row[6],
                timestamp: Date(timeIntervalSince1970: row[7]), schemaVersion: row[8],
                traceparent: row[9], contentType: row[10], body: row[11])
            return (row[0], envelope)
        }
    }

    /// Deletes published rows.
    static func remove(_ seqs: [Int64], in db: Database) throws {
        guard !seqs.isEmpty else { return }
        // One prepared statement whatever the count: the sequence numbers go in as a JSON array.
        var list = "["
        list.reserveCapacity(seqs.count * 8 + 2)
        for (i, seq) in seqs.enumerated() {
            if i > 0 { list += "," }
            list += String(seq)
        }
        list += "]"
        try db.cachedStatement(sql: "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?))")
            .execute(arguments: [list])
    }

    /// Rows waiting to be published.
    public static func depth(in db: Database) throws -> Int {
        try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM outbox") ?? 0
    }
}

// MARK: - PostgreSQL

import PostgresNIO

extension Outbox {
    /// The table in a service's PostgreSQL schema (migration `outbox-inbox`).
    static let postgresSchema = [
        """
        CREATE TABLE IF NOT EXISTS outbox (
            seq BIGSERIAL PRIMARY KEY,
            event_id TEXT NOT NULL,
            routing_key TEXT NOT NULL,
            type TEXT NOT NULL,
            correlation_id TEXT,
            causation_id TEXT,
            app_id TEXT NOT NULL,
            timestamp DOUBLE PRECISION NOT NULL,
            schema_version INTEGER NOT NULL,
            traceparent TEXT,
            content_type TEXT NOT NULL,
            body BYTEA NOT NULL,
            claimed_by TEXT,
            claimed_at DOUBLE PRECISION
        )
        """,
    ]

    /// Appends `envelopes` (in order) in `session`'s transaction, claimed by `relay`, and
    /// returns them with their sequence numbers: one statement whatever their number (each
    /// column an array, `unnest`ed in order; a null column is a flag beside it).
    static func append(_ envelopes: [EventEnvelope], claimedBy relay: String?,
                       in session: PostgresSession) throws -> [(Int64, EventEnvelope)] {
        let appended = try submitAppend(envelopes, claimedBy: relay, in: session)
        try session.sync()
        return try appended.rows()
    }

    /// The rows an ``submitAppend(_:claimedBy:in:)`` stored, read once its statement has run.
    struct Appended: Sendable {
        fileprivate let pending: PostgresSession.Pending?
        fileprivate let envelopes: [EventEnvelope]

        /// The sequence numbers of the rows, beside their envelopes (waits for the statement).
        func rows() throws -> [(Int64, EventEnvelope)] {
            guard let pending else { return [] }
            let rows = try pending.rows()
            guard rows.count == envelopes.count else {
                throw StoreUnavailable(reason: "INSERT INTO outbox returned \(rows.count) rows for \(envelopes.count)")
            }
            // Sequence numbers are drawn in insertion order: sorted, they match the envelopes.
            let seqs = try rows.map { try $0.column(0, as: Int64.self) }.sorted()
            return Array(zip(seqs, envelopes))
        }
    }

    /// ``append(_:claimedBy:in:)`` sent without waiting (after the row batches gathered so far):
    /// a shared transaction sends it and its `COMMIT` together and waits once.
    static func submitAppend(_ envelopes: [EventEnvelope], claimedBy relay: String?,
                             in session: PostgresSession) throws -> Appended {
        guard !envelopes.isEmpty else { return Appended(pending: nil, envelopes: []) }
        try session.sendBatches()
        var binds = PostgresBindings(capacity: 16)
        let sql = appendStatement(envelopes, claimedBy: relay, into: &binds)
        return Appended(pending: session.submit(sql, binds), envelopes: envelopes)
    }

    /// A shared transaction of row batches only, as one statement with no `BEGIN` or
    /// `COMMIT` (one transaction all the same): the rows of each batch, the deletion of
    /// published rows and the outbox rows, each a part of one `WITH`. The server parses,
    /// plans and commits one statement instead of four or five, and the process sends and
    /// reads one.
    static func submitAlone(_ envelopes: [EventEnvelope], claimedBy relay: String?, deleting: [Int64],
                            in session: PostgresSession) -> Appended {
        var binds = PostgresBindings(capacity: 24)
        var parts: [String] = []
        for batch in session.takeBatches() {
            if let sql = batch.statement(into: &binds) { parts.append(sql) }
        }
        if !deleting.isEmpty {
            binds.append(deleting)
            parts.append("DELETE FROM outbox WHERE seq = ANY($\(binds.count))")
        }
        let main = envelopes.isEmpty ? "SELECT NULL::int8 WHERE false"
            : appendStatement(envelopes, claimedBy: relay, into: &binds)
        let with = parts.isEmpty ? "" : "WITH " + parts.enumerated().map { "w\($0) AS (\($1))" }.joined(separator: ", ") + "\n"
        return Appended(pending: session.submitAlone(with + main, binds), envelopes: envelopes)
    }

    /// The `INSERT` of `envelopes` (`RETURNING seq`), its values appended to `binds`.
    private static func appendStatement(_ envelopes: [EventEnvelope], claimedBy relay: String?,
                                        into binds: inout PostgresBindings) -> String {
        let first = binds.count + 1
        binds.append(envelopes.map(\.eventId.lowercaseText))
        binds.append(envelopes.map(\.routingKey))
        binds.append(envelopes.map(\.type))
        binds.append(envelopes.map { $0.correlationId ?? "" })
        binds.append(envelopes.map { $0.correlationId == nil })
        binds.append(envelopes.map { $0.causationId ?? "" })
        binds.append(envelopes.map { $0.causationId == nil })
        binds.append(envelopes.map(\.appId))
        binds.append(envelopes.map(\.timestamp.timeIntervalSince1970))
        binds.append(envelopes.map(\.schemaVersion))
        binds.append(envelopes.map { $0.traceparent ?? "" })
        binds.append(envelopes.map { $0.traceparent == nil })
        binds.append(envelopes.map(\.contentType))
        binds.append(envelopes.map { ByteBuffer(data: $0.body) })
        binds.append(relay)
        binds.append(relay.map { _ in Date().timeIntervalSince1970 })
        // Rows go in in the order of the arrays (ORDER BY the ordinality), so the sequence
        // numbers follow it; RETURNING has no order, hence the ordinality beside each.
        return PostgresSQL.renumbered("""
            INSERT INTO outbox (event_id, routing_key, type, correlation_id, causation_id, app_id,
                                timestamp, schema_version, traceparent, content_type, body, claimed_by, claimed_at)
            SELECT e, k, t, CASE WHEN cn THEN NULL ELSE c END, CASE WHEN un THEN NULL ELSE u END, a,
                   ts, v, CASE WHEN pn THEN NULL ELSE p END, ct, b, $15, $16
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::text[], $7::bool[],
                        $8::text[], $9::float8[], $10::int8[], $11::text[], $12::bool[], $13::text[], $14::bytea[])
                 WITH ORDINALITY AS r(e, k, t, c, cn, u, un, a, ts, v, p, pn, ct, b, n)
            ORDER BY n
            RETURNING seq
            """, from: first)
    }

    /// ``claim(limit:relay:includeOwn:after:staleAfter:in:)`` on PostgreSQL: rows another
    /// relay is claiming at the same moment are skipped (`FOR UPDATE SKIP LOCKED`), so
    /// replicas sweeping at once never take the same row and never wait for each other.
    static func claim(limit: Int, relay: String, includeOwn: Bool, after: Int64, staleAfter: Double,
                      in session: PostgresSession) throws -> [(Int64, EventEnvelope)] {
        let now = Date().timeIntervalSince1970
        let sweep = relay + ".sweep"
        var binds = PostgresBindings(capacity: 7)
        binds.append(sweep)
        binds.append(now)
        binds.append(after)
        binds.append(relay)
        binds.append(includeOwn)
        binds.append(now - staleAfter)
        binds.append(limit)
        let rows = try session.query("""
            UPDATE outbox SET claimed_by = $1, claimed_at = $2
            WHERE seq IN (SELECT seq FROM outbox
                          WHERE seq > $3
                            AND (claimed_by IS NULL
                                 OR (claimed_by IN ($4, $1) AND $5)
                                 OR (claimed_by NOT IN ($4, $1) AND claimed_at < $6))
                          ORDER BY seq LIMIT $7
                          FOR UPDATE SKIP LOCKED)
            RETURNING seq, event_id, routing_key, type, correlation_id, causation_id, app_id, timestamp,
                      schema_version, traceparent, content_type, body
            """, binds)
        var claimed: [(Int64, EventEnvelope)] = []
        claimed.reserveCapacity(rows.count)
        for row in rows {
            let r = row.makeRandomAccess()
            guard let id = UUID(text: try r[1].decode(String.self)) else { continue }
            var body = try r[11].decode(ByteBuffer.self)
            let envelope = EventEnvelope(
                eventId: id, routingKey: try r[2].decode(String.self), type: try r[3].decode(String.self),
                correlationId: try r[4].decode(String?.self), causationId: try r[5].decode(String?.self),
                appId: try r[6].decode(String.self),
                timestamp: Date(timeIntervalSince1970: try r[7].decode(Double.self)),
                schemaVersion: try r[8].decode(Int.self), traceparent: try r[9].decode(String?.self),
                contentType: try r[10].decode(String.self), body: body.readData(length: body.readableBytes) ?? Data())
            claimed.append((try r[0].decode(Int64.self), envelope))
        }
        // RETURNING follows no order: the relay publishes in sequence order.
        claimed.sort { $0.0 < $1.0 }
        return claimed
    }

    /// Deletes published rows.
    static func remove(_ seqs: [Int64], in session: PostgresSession) throws {
        guard !seqs.isEmpty else { return }
        try session.execute("DELETE FROM outbox WHERE seq = ANY($1)", PostgresBindings(seqs))
    }

    /// ``remove(_:in:)`` sent without waiting: its error, if any, is thrown by the next wait.
    static func sendRemove(_ seqs: [Int64], in session: PostgresSession) {
        guard !seqs.isEmpty else { return }
        session.send("DELETE FROM outbox WHERE seq = ANY($1)", PostgresBindings(seqs))
    }

    /// Rows waiting to be published.
    static func depth(in session: PostgresSession) throws -> Int {
        try session.query("SELECT count(*) FROM outbox").first?.column(0, as: Int.self) ?? 0
    }
}
