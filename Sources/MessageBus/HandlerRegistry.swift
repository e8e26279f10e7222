import EventCatalog

/// The handlers of one service: exactly one per command, any number per event. Each declares
/// the events it raises (what the catalog says the process publishes; raising another fails).
///
/// ```swift
/// var registry = HandlerRegistry()
/// try registry.handle(RecordPrices.self, raises: [PricesRecorded.self]) { command, context in ... }
/// registry.on(PricesRecorded.self, raises: [ReturnsCalculated.self]) { event, context in ... }
/// let bus = MessageBus(appId: "returns", registry: registry)
/// ```
public struct HandlerRegistry: Sendable {
    typealias AnyCommandHandler = @Sendable (any Command, HandlerContext) async throws -> Void
    typealias AnyEventHandler = @Sendable (EventEnvelope, HandlerContext) async throws -> Void

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

    /// Adds a handler for events of type `E`, which raises only events of `raises`. The
    /// payload is decoded and validated first: one that fails is ``BusError/undecodable``.
    public mutating func on<E: Event>(
        _ type: E.Type, raises: [any Event.Type] = [],
        _ handler: @escaping @Sendable (E, HandlerContext) async throws -> Void
    ) {
        let decoding: AnyEventHandler = { envelope, context in
            let event: E
            do {
                event = try envelope.decode(E.self)
                try event.validate()
            } catch {
                throw BusError(.undecodable, "\(E.routingKey): \(error)")
            }
            try await handler(event, context)
        }
        eventHandlers[E.routingKey, default: []].append(Registered(handler: decoding, raises: Set(raises.map { $0.routingKey })))
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
