import EventCatalog
import Foundation
import Testing

@Suite("Event catalog")
struct CatalogTests {
    @Test("every routing key is unique and of the form <service>.events.<name>")
    func routingKeysAreUnique() {
        let keys = Catalog.eventTypes.map { $0.routingKey }
        #expect(Set(keys).count == keys.count)
        for key in keys {
            let parts = key.split(separator: ".")
            #expect(parts.count == 3, "\(key)")
            #expect(parts[1] == "events", "\(key)")
        }
    }

    @Test("event name and service come from the routing key")
    func names() {
        #expect(PricesRecorded.eventName == "prices_recorded")
        #expect(PricesRecorded.service == "returns")
        #expect(CorrelationsUpdated.service == "correlations")
        #expect(RoutingKey.eventName(of: "returns.events.operation_failed") == "operation_failed")
        #expect(RoutingKey.service(of: "correlations.events.window_added") == "correlations")
        #expect(RoutingKey.eventName(of: "plain") == "plain")
        #expect(RoutingKey.service(of: "plain") == "plain")
        for event in Catalog.eventTypes {
            let parts = event.routingKey.split(separator: ".")
            #expect(RoutingKey.eventName(of: event.routingKey) == String(parts.last!))
            #expect(RoutingKey.service(of: event.routingKey) == String(parts.first!))
        }
    }

    static let samples: [any Event] = [
        PricesRecorded(symbol: "AAPL", firstDate: CalendarDate("2024-01-02")!,
                       lastDate: CalendarDate("2024-01-04")!, count: 3),
        ReturnsCalculated(symbol: "AAPL", returns: [DatedValue(date: CalendarDate("2024-01-03")!, value: -0.0074876)]),
        ReturnsCalculated(symbol: "MSFT", returns: []),
        ReturnsOperationFailed(OperationFailure(operationId: "op", service: "returns", reason: "boom")),
        WindowAdded(window: 60),
        CorrelationsUpdated(symbols: ["AAPL", "MSFT"], windows: [20, 60], asOf: CalendarDate("2024-01-04"), pairs: 2),
        CorrelationsOperationFailed(OperationFailure(operationId: "op", service: "correlations", reason: "x")),
    ]

    @Test("every catalog type has a sample here")
    func samplesCoverCatalog() {
        let sampled = Set(Self.samples.map { type(of: $0).routingKey })
        #expect(sampled == Set(Catalog.eventTypes.map { $0.routingKey }))
    }

    @Test("every event round-trips through JSON and through an envelope")
    func roundTrip() throws {
        func check<E: Event>(_ event: E) throws {
            let data = try EventJSON.encode(event)
            #expect(try EventJSON.decode(E.self, from: data) == event)
            let envelope = try EventEnvelope(event, correlationId: "op-1", causationId: "cmd-1")
            #expect(envelope.routingKey == E.routingKey)
            #expect(envelope.type == E.eventName)
            #expect(envelope.appId == E.service)
            #expect(try envelope.decode(E.self) == event)
        }
        for sample in Self.samples { try check(sample) }
    }

    @Test("payloads use the wire names of DESIGN.md")
    func wireNames() throws {
        let recorded = try JSONSerialization.jsonObject(with: EventJSON.encode(Self.samples[0])) as! [String: Any]
        #expect(Set(recorded.keys) == ["symbol", "first_date", "last_date", "count"])
        #expect(recorded["first_date"] as? String == "2024-01-02")
        let failed = try JSONSerialization.jsonObject(with: EventJSON.encode(Self.samples[3])) as! [String: Any]
        #expect(Set(failed.keys) == ["operation_id", "service", "reason"])
        let updated = try JSONSerialization.jsonObject(with: EventJSON.encode(Self.samples[5])) as! [String: Any]
        #expect(Set(updated.keys) == ["symbols", "windows", "as_of", "pairs"])
        let calculated = try JSONSerialization.jsonObject(with: EventJSON.encode(Self.samples[1])) as! [String: Any]
        let first = (calculated["returns"] as! [[String: Any]])[0]
        #expect(Set(first.keys) == ["date", "value"])
    }

    @Test("decoding with the wrong type is refused")
    func wrongType() throws {
        let envelope = try EventEnvelope(WindowAdded(window: 5))
        #expect(throws: CatalogError.self) { try envelope.decode(PricesRecorded.self) }
    }

    @Test("the catalog names publishers and consumers")
    func entries() {
        let entry = Catalog.entries.first { $0.routingKey == PricesRecorded.routingKey }!
        #expect(entry.publishers == ["returns-api"])
        #expect(entry.consumers == ["returns-worker", "boundary"])
        #expect(Catalog.eventType(forRoutingKey: "returns.events.returns_calculated") != nil)
        #expect(Catalog.eventType(forRoutingKey: "nope.events.nope") == nil)
    }
}

@Suite("Calendar dates and routing patterns")
struct DateAndPatternTests {
    @Test("only existing days in YYYY-MM-DD form parse", arguments: [
        ("2024-02-29", true), ("2023-02-29", false), ("2000-02-29", true), ("1900-02-29", false),
        ("2024-04-31", false), ("2024-12-31", true), ("2024-1-02", false), ("2024-01-02T00:00", false),
        ("abcd-01-02", false), ("2024-00-10", false), ("", false),
    ])
    func parse(text: String, valid: Bool) {
        #expect((CalendarDate(text) != nil) == valid)
        if valid { #expect(CalendarDate(text)!.description == text) }
    }

    @Test("every day from year 1 to 9999 prints as YYYY-MM-DD and parses back, from a String or a Substring")
    func printsAndParses() {
        for days in stride(from: -719_162, through: 2_932_896, by: 7) {
            let date = CalendarDate(daysSinceEpoch: days)
            let text = String(format: "%04d-%02d-%02d", date.year, date.month, date.day)
            #expect(date.description == text)
            #expect(CalendarDate(text) == date)
            #expect(CalendarDate(("x" + text + "y").dropFirst().dropLast()) == date)
        }
    }

    @Test("days since the epoch match Foundation's calendar")
    func epochDays() {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        for text in ["1970-01-01", "2024-02-29", "1969-12-31", "2100-03-01"] {
            let d = CalendarDate(text)!
            let date = calendar.date(from: DateComponents(year: d.year, month: d.month, day: d.day))!
            #expect(d.daysSinceEpoch == Int(date.timeIntervalSince1970 / 86_400))
        }
    }

    @Test("topic patterns", arguments: [
        ("returns.events.*", "returns.events.prices_recorded", true),
        ("*.events.prices_recorded", "returns.events.prices_recorded", true),
        ("returns.#", "returns.events.prices_recorded", true),
        ("#", "returns.events.prices_recorded", true),
        ("returns.events", "returns.events.prices_recorded", false),
        ("correlations.events.*", "returns.events.prices_recorded", false),
        ("returns.*", "returns.events.prices_recorded", false),
        ("returns.events.prices_recorded", "returns.events.prices_recorded", true),
    ])
    func topic(pattern: String, key: String, matches: Bool) {
        #expect(RoutingKey.matches(pattern: pattern, key: key) == matches)
    }
}

@Suite("Workflow progress (the boundary's and the daemon's rule)")
struct WorkflowProgressTests {
    @Test("succeeds with as many resolving as starting events, fails on operation_failed, and stays")
    func rule() {
        var progress = WorkflowProgress()
        var counted = progress.count(eventId: "u1", routingKey: CorrelationsUpdated.routingKey)
        #expect(counted)
        #expect(progress.outcome == nil)  // resolving events alone decide nothing
        counted = progress.count(eventId: "p1", routingKey: PricesRecorded.routingKey)
        #expect(counted)
        #expect(progress.outcome == .succeeded)
        counted = progress.count(eventId: "p1", routingKey: PricesRecorded.routingKey)
        #expect(!counted)
        #expect(progress.events == 2)
        progress.count(eventId: "f1", routingKey: "returns.events.operation_failed")
        #expect(progress.outcome == .succeeded)  // decided already

        var two = WorkflowProgress()
        two.count(eventId: "a", routingKey: PricesRecorded.routingKey)
        two.count(eventId: "b", routingKey: PricesRecorded.routingKey)
        two.count(eventId: "c", routingKey: CorrelationsUpdated.routingKey)
        #expect(two.outcome == nil && two.started == 2 && two.resolved == 1)
        two.count(eventId: "c", routingKey: CorrelationsUpdated.routingKey)  // the same event again
        #expect(two.outcome == nil)
        two.count(eventId: "f", routingKey: "correlations.events.operation_failed")
        #expect(two.outcome == .failed)
    }
}

@Suite("RFC 3339 times")
struct RFC3339Tests {
    @Test("whole seconds, milliseconds (0.123 stays 123), and years past 9999 or before 1 clamped")
    func format() {
        #expect(RFC3339.string(1_764_806_400) == "2025-12-04T00:00:00Z")
        #expect(RFC3339.string(1_764_806_400.123, milliseconds: true) == "2025-12-04T00:00:00.123Z")
        #expect(RFC3339.string(seconds: 1_764_806_400, milliseconds: 7) == "2025-12-04T00:00:00.007Z")
        #expect(RFC3339.string(1e30) == "9999-12-31T23:59:59Z")
        #expect(RFC3339.string(-1e30) == "0001-01-01T00:00:00Z")
        #expect(RFC3339.string(.nan) == "1970-01-01T00:00:00Z")
        #expect(RFC3339.string(1_764_806_400.9999, milliseconds: true) == "2025-12-04T00:00:01.000Z")
        #expect(RFC3339.string(-0.25, milliseconds: true) == "1969-12-31T23:59:59.750Z")
    }
}
