import EventCatalog
import Foundation
import MessageBus
import Testing

struct Greet: Command { let name: String }
struct Fail: Command {}
struct Boom: Error {}

@Suite("Message bus")
struct BusTests {
    let metadata = MessageMetadata(correlationId: "op-1", causationId: "cmd-1", traceparent: "00-abc-def-01")

    @Test("a command's one handler runs and the events it raises and stores carry the operation's ids")
    func commandRaisesEvents() async throws {
        let transport = InMemoryTransport()
        var registry = HandlerRegistry()
        try registry.handle(Greet.self, raises: [WindowAdded.self]) { command, context in
            try context.raise(WindowAdded(window: command.name.count))
            try await transport.publish(context.takeRaised())  // the store's write
        }
        let bus = MessageBus(appId: "returns", registry: registry)
        try await bus.send(Greet(name: "abc"), metadata: metadata)
        let published = await transport.published
        #expect(published.count == 1)
        let envelope = try #require(published.first)
        #expect(try envelope.decode(WindowAdded.self) == WindowAdded(window: 3))
        #expect(envelope.correlationId == "op-1")
        #expect(envelope.causationId == "cmd-1")
        #expect(envelope.traceparent == "00-abc-def-01")
        #expect(envelope.appId == "returns")
    }

    @Test("a command's error reaches the caller and nothing is published")
    func commandError() async throws {
        let transport = InMemoryTransport()
        var registry = HandlerRegistry()
        try registry.handle(Fail.self, raises: [WindowAdded.self]) { _, context in
            try context.raise(WindowAdded(window: 1))
            throw Boom()
        }
        let bus = MessageBus(appId: "x", registry: registry)
        await #expect(throws: Boom.self) { try await bus.send(Fail(), metadata: metadata) }
        #expect(await transport.published.isEmpty)
    }

    @Test("events raised and not stored fail the message: there is no other way for them to leave")
    func raisedNotStored() async throws {
        var registry = HandlerRegistry()
        try registry.handle(Greet.self, raises: [WindowAdded.self]) { _, context in
            try context.raise(WindowAdded(window: 1))
        }
        registry.on(WindowAdded.self, raises: [CorrelationsUpdated.self]) { _, context in
            try context.raise(CorrelationsUpdated(symbols: [], windows: [], asOf: nil, pairs: 0))
        }
        let bus = MessageBus(appId: "x", registry: registry)
        await #expect(throws: BusError(.eventsNotStored, "the handler of Greet raised [\"correlations.events.window_added\"] "
                                       + "without storing them: a handler raises events inside its store's write, which "
                                       + "stores them in its transaction")) {
            try await bus.send(Greet(name: ""), metadata: metadata)
        }
        do {
            try await bus.dispatch(try EventEnvelope(WindowAdded(window: 2)))
            Issue.record("expected an error")
        } catch let error as BusError {
            #expect(error.code == .handlersFailed && error.message.contains("eventsNotStored"))
        }
    }

    @Test("a handler raises only the events it declares; the registry lists them")
    func undeclared() async throws {
        var registry = HandlerRegistry()
        try registry.handle(Greet.self, raises: [WindowAdded.self]) { _, context in
            try context.raise(CorrelationsUpdated(symbols: [], windows: [], asOf: nil, pairs: 0))
        }
        registry.on(WindowAdded.self, raises: [CorrelationsUpdated.self]) { _, _ in }
        let bus = MessageBus(appId: "x", registry: registry)
        do {
            try await bus.send(Greet(name: ""), metadata: metadata)
            Issue.record("expected an error")
        } catch let error as BusError {
            #expect(error.code == .undeclaredEvent)
        }
        #expect(bus.raisedRoutingKeys == [CorrelationsUpdated.routingKey, WindowAdded.routingKey])
    }

    @Test("one handler per command")
    func duplicateCommandHandler() throws {
        var registry = HandlerRegistry()
        try registry.handle(Greet.self) { _, _ in }
        #expect(throws: BusError.self) { try registry.handle(Greet.self) { _, _ in } }
    }

    @Test("a command without a handler is an error")
    func missingHandler() async {
        let bus = MessageBus(appId: "x", registry: HandlerRegistry())
        await #expect(throws: BusError.self) { try await bus.send(Greet(name: ""), metadata: metadata) }
    }

    @Test("every handler of an event runs; a failing one is counted and makes dispatch throw")
    func eventHandlers() async throws {
        let transport = InMemoryTransport()
        let seen = Counter()
        var registry = HandlerRegistry()
        registry.on(WindowAdded.self) { _, _ in throw Boom() }
        registry.on(WindowAdded.self, raises: [CorrelationsUpdated.self]) { event, context in
            await seen.add(event.window)
            try context.raise(CorrelationsUpdated(symbols: [], windows: [event.window], asOf: nil, pairs: 0))
            try await transport.publish(context.takeRaised())  // the store's write
        }
        let bus = MessageBus(appId: "correlations", registry: registry)
        let incoming = try EventEnvelope(WindowAdded(window: 20), correlationId: "op-9")
        await #expect(throws: BusError.self) { try await bus.dispatch(incoming) }
        #expect(await seen.value == 20)
        #expect(bus.handlerFailures == 1)
        let raised = try #require(await transport.published.first)
        #expect(raised.correlationId == "op-9")
        #expect(raised.causationId == incoming.eventId.uuidString.lowercased())
        #expect(bus.routingKeys == [WindowAdded.routingKey])
    }

    @Test("an event that does not decode, or has no handler, is reported as such")
    func undecodableAndUnknown() async throws {
        var registry = HandlerRegistry()
        registry.on(WindowAdded.self) { _, _ in }
        let bus = MessageBus(appId: "x", registry: registry)
        let bad = EventEnvelope(routingKey: WindowAdded.routingKey, appId: "x", body: Data("{\"window\":\"x\"}".utf8))
        do {
            try await bus.dispatch(bad)
            Issue.record("expected an error")
        } catch let error as BusError {
            #expect(error.code == .undecodable)
        }
        let unknown = try EventEnvelope(PricesRecorded(symbol: "A", firstDate: CalendarDate("2024-01-02")!,
                                                       lastDate: CalendarDate("2024-01-02")!, count: 1))
        do {
            try await bus.dispatch(unknown)
            Issue.record("expected an error")
        } catch let error as BusError {
            #expect(error.code == .noHandler)
        }
    }

    @Test("a batch handler gets each run of consecutive events of its type at once, in delivery order; a per-event handler each event")
    func batchRuns() async throws {
        let calls = Calls()
        var registry = HandlerRegistry()
        registry.onBatch(WindowAdded.self) { batch in await calls.add(batch.map(\.event.window)) }
        registry.on(CorrelationsUpdated.self) { event, _ in await calls.add([-event.pairs]) }
        let bus = MessageBus(appId: "correlations", registry: registry)
        let envelopes = try [
            EventEnvelope(WindowAdded(window: 10)), EventEnvelope(WindowAdded(window: 2)),
            EventEnvelope(CorrelationsUpdated(symbols: [], windows: [], asOf: nil, pairs: 3)),
            EventEnvelope(CorrelationsUpdated(symbols: [], windows: [], asOf: nil, pairs: 4)),
            EventEnvelope(WindowAdded(window: 5)), EventEnvelope(WindowAdded(window: 6)), EventEnvelope(WindowAdded(window: 7)),
        ]
        let errors = await bus.dispatch(envelopes)
        #expect(errors.allSatisfy { $0 == nil })
        #expect(await calls.list == [[10, 2], [-3], [-4], [5, 6, 7]])
    }

    @Test("a failing batch is handled again event by event: the poison event fails alone, the others succeed once; an undecodable one never reaches the handler")
    func poisonInBatch() async throws {
        let calls = Calls()
        let applied = Calls()
        var registry = HandlerRegistry()
        registry.onBatch(WindowAdded.self) { batch in
            await calls.add(batch.map(\.event.window))
            // All or nothing, as a batch's transaction is.
            if batch.contains(where: { $0.event.window == 13 }) { throw Boom() }
            await applied.add(batch.map(\.event.window))
        }
        let bus = MessageBus(appId: "correlations", registry: registry)
        var envelopes = try [11, 12, 13, 14].map { try EventEnvelope(WindowAdded(window: $0)) }
        envelopes.insert(EventEnvelope(routingKey: WindowAdded.routingKey, appId: "x", body: Data("{\"window\":\"x\"}".utf8)),
                         at: 1)
        let errors = await bus.dispatch(envelopes)
        #expect(errors.map { ($0 as? BusError)?.code } == [nil, .undecodable, nil, .handlersFailed, nil])
        #expect(await calls.list == [[11, 12, 13, 14], [11], [12], [13], [14]])
        #expect(await applied.list == [[11], [12], [14]])
        #expect(bus.handlerFailures == 1)
    }

    @Test("a batch handler that raises events and does not store them fails those events")
    func batchEventsNotStored() async throws {
        var registry = HandlerRegistry()
        registry.onBatch(WindowAdded.self, raises: [CorrelationsUpdated.self]) { batch in
            try batch[0].context.raise(CorrelationsUpdated(symbols: [], windows: [], asOf: nil, pairs: 0))
        }
        let bus = MessageBus(appId: "correlations", registry: registry)
        let errors = await bus.dispatch(try [20, 60].map { try EventEnvelope(WindowAdded(window: $0)) })
        #expect(errors.map { ($0 as? BusError)?.code } == [.handlersFailed, nil])
        #expect("\(errors[0]!)".contains("without storing"))
    }
}

actor Counter {
    var value = 0
    func add(_ n: Int) { value += n }
}

actor Calls {
    var list: [[Int]] = []
    func add(_ call: [Int]) { list.append(call) }
}
