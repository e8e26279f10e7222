import EventCatalog

/// The handlers of one service: exactly one per command, any number per event. Each declares
/// the events it raises (what the catalog says the process publishes; raising another fails).
///
/// ```swift
/// var registry = HandlerRegistry()
/// try registry.handle(RecordPrices.self, raises: [PricesRecorded.self]) { command, context in ... }
/// registry.on(PricesRecorded.self, raises: [ReturnsCalculated.self]) { event, context in ... }
/// registry.onBatch(ReturnsCalculated.self, raises: [CorrelationsUpdated.self]) { batch in ... }
/// let bus = MessageBus(appId: "returns", registry: registry)
/// ```
public struct HandlerRegistry: Sendable {
    typealias AnyCommandHandler = @Sendable (any Command, HandlerContext) async throws -> Void
    /// Runs a handler over consecutive envelopes of one routing key, with a new context for
    /// envelope `i` from `context(i)`, and checks that what it raised was stored. One error
    /// (or `nil`) per envelope.
    typealias AnyEventHandler = @Sendable ([EventEnvelope], _ context: @Sendable (Int) -> HandlerContext) async -> [(any Error)?]

    struct Registered<Handler: Sendable>: Sendable {
        let handler: Handler
        /// Routing keys of the events the handler raises.
        let raises: Set<String>
    }

    var commandHandlers: [ObjectIdentifier: Registered<AnyCommandHandler>] = [:]
    var eventHandlers: [String: [Registered<AnyEventHandler>]] = [:]

    public init() {}

    /// Registers the one handler of `C`, which raises only events of `raises`; throws when
    /// `C` already has one.
    public mutating func handle<C: Command>(
        _ type: C.Type, raises: [any Event.Type] = [],
        _ handler: @escaping @Sendable (C, HandlerContext) async throws -> Void
    ) throws {
        let key = ObjectIdentifier(type)
        guard commandHandlers[key] == nil else {
            throw BusError(.duplicateHandler, "\(C.name) already has a handler")
        }
        let typed: AnyCommandHandler = { command, context in
            // The registry is keyed by the command's type, so the cast always holds.
            try await handler(command as! C, context)
        }
        commandHandlers[key] = Registered(handler: typed, raises: Set(raises.map { $0.routingKey }))
    }

    /// Adds a handler for events of type `E`, called once per event, which raises only
    /// events of `raises`. The payload is decoded and validated first: one that fails is
    /// ``BusError/undecodable``.
    public mutating func on<E: Event>(
        _ type: E.Type, raises: [any Event.Type] = [],
        _ handler: @escaping @Sendable (E, HandlerContext) async throws -> Void
    ) {
        let run: AnyEventHandler = { envelopes, makeContext in
            var errors = [(any Error)?](repeating: nil, count: envelopes.count)
            for index in envelopes.indices {
                do {
                    let context = makeContext(index)
                    try await handler(try Self.decode(E.self, envelopes[index]), context)
                    try context.checkStored(E.routingKey)
                } catch {
                    errors[index] = error
                }
            }
            return errors
        }
        eventHandlers[E.routingKey, default: []].append(Registered(handler: run, raises: Set(raises.map { $0.routingKey })))
    }

    /// Adds a handler for batches of events of type `E`: the consecutive events of that type in
    /// a worker's delivery batch, in delivery order, each with its own context. It applies them
    /// in one write (see `ServiceDatabase.write(_:_:)` with several contexts), so a batch costs
    /// one transaction and the handler can share work among its events. When it throws, each
    /// event of the batch is handled again alone (a batch of one), so a failing event fails
    /// alone and the others are applied once. At a low rate the batches are of one event:
    /// the same code path.
    public mutating func onBatch<E: Event>(
        _ type: E.Type, raises: [any Event.Type] = [],
        _ handler: @escaping @Sendable ([HandledEvent<E>]) async throws -> Void
    ) {
        let run: AnyEventHandler = { envelopes, makeContext in
            var errors = [(any Error)?](repeating: nil, count: envelopes.count)
            var batch: [HandledEvent<E>] = []
            var indices: [Int] = []
            batch.reserveCapacity(envelopes.count)
            for index in envelopes.indices {
                do {
                    batch.append(HandledEvent(event: try Self.decode(E.self, envelopes[index]), context: makeContext(index)))
                    indices.append(index)
                } catch {
                    errors[index] = error
                }
            }
            guard !batch.isEmpty else { return errors }
            do {
                try await handler(batch)
                for (item, index) in zip(batch, indices) {
                    do { try item.context.checkStored(E.routingKey) } catch { errors[index] = error }
                }
            } catch where batch.count > 1 {
                // Each on its own, with fresh contexts (the batch's may hold raised events).
                for (item, index) in zip(batch, indices) {
                    do {
                        let alone = HandledEvent(event: item.event, context: makeContext(index))
                        try await handler([alone])
                        try alone.context.checkStored(E.routingKey)
                    } catch {
                        errors[index] = error
                    }
                }
            } catch {
                errors[indices[0]] = error
            }
            return errors
        }
        eventHandlers[E.routingKey, default: []].append(Registered(handler: run, raises: Set(raises.map { $0.routingKey })))
    }

    /// `envelope`'s payload as `E`, validated; ``BusError/undecodable`` otherwise.
    private static func decode<E: Event>(_ type: E.Type, _ envelope: EventEnvelope) throws -> E {
        do {
            let event = try envelope.decode(E.self)
            try event.validate()
            return event
        } catch {
            throw BusError(.undecodable, "\(E.routingKey): \(error)")
        }
    }

    /// The routing keys that have at least one handler: what a worker binds.
    public var routingKeys: [String] { eventHandlers.keys.sorted() }

    /// The routing keys the registered handlers declare they raise, sorted.
    public var raisedRoutingKeys: [String] {
        let commands = commandHandlers.values.flatMap(\.raises)
        let events = eventHandlers.values.flatMap { $0.flatMap(\.raises) }
        return Set(commands + events).sorted()
    }
}

/// One event of a batch given to an ``HandlerRegistry/onBatch(_:raises:_:)`` handler, with the
/// context its raised events go to.
public struct HandledEvent<E: Event>: Sendable {
    public let event: E
    public let context: HandlerContext

    public init(event: E, context: HandlerContext) {
        self.event = event
        self.context = context
    }
}
