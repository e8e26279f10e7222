import EventCatalog

/// Outbox rows committed by this process and not yet taken by its relay.
struct OutboxFeed: Sendable {
    /// Beyond this many (the broker is slow or down, say), the feed closes: rows are left in
    /// the table only and the relay reads them back from there, so memory stays bounded.
    static let limit = 2_000
    var rows: [(Int64, EventEnvelope)] = []
    var overflowed = false
    /// Closed by an overflow or by the relay while it sweeps its own rows; opened by the relay.
    var closed = false

    /// Committed rows that could not be read back: the relay reads them from the table, as
    /// after an overflow.
    mutating func lose() {
        rows = []
        overflowed = true
        closed = true
    }

    mutating func add(_ more: [(Int64, EventEnvelope)]) {
        guard !more.isEmpty, !closed else { return }
        if rows.count + more.count > Self.limit {
            rows = []
            overflowed = true
            closed = true
        } else {
            rows.append(contentsOf: more)
        }
    }
}
