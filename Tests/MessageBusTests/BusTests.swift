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
}

actor Counter {
    var value = 0
    func add(_ n: Int) { value += n }
}
