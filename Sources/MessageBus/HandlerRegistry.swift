import EventCatalog

/// The handlers of one service: exactly one per command, any number per event.
///
/// ```swift
/// var registry = HandlerRegistry()
/// try registry.handle(RecordPrices.self) { command, context in ... }
/// registry.on(PricesRecorded.self) { event, context in ... }
/// let bus = MessageBus(appId: "returns", registry: registry, publisher: transport)
/// ```
public struct HandlerRegistry: Sendable {
    typealias AnyCommandHandler = @Sendable (any Command, HandlerContext) async throws -> Void
    typealias AnyEventHandler = @Sendable (EventEnvelope, HandlerContext) async throws -> Void

    var commandHandlers: [ObjectIdentifier: AnyCommandHandler] = [:]
    var eventHandlers: [String: [AnyEventHandler]] = [:]

    public init() {}

    /// Registers the one handler of `C`; throws when `C` already has one.
    public mutating func handle<C: Command>(
        _ type: C.Type, _ handler: @escaping @Sendable (C, HandlerContext) async throws -> Void
    ) throws {
        let key = ObjectIdentifier(type)
        guard commandHandlers[key] == nil else {
            throw BusError(.duplicateHandler, "\(C.name) already has a handler")
        }
        commandHandlers[key] = { command, context in
            // The registry is keyed by the command's type, so the cast always holds.
            try await handler(command as! C, context)
        }
    }

    /// Adds a handler for events of type `E`.
    public mutating func on<E: Event>(
        _ type: E.Type, _ handler: @escaping @Sendable (E, HandlerContext) async throws -> Void
    ) {
        eventHandlers[E.routingKey, default: []].append { envelope, context in
            let event: E
            do {
                event = try envelope.decode(E.self)
                try event.validate()
            } catch {
                throw BusError(.undecodable, "\(E.routingKey): \(error)")
            }
            try await handler(event, context)
        }
    }

    /// The routing keys that have at least one handler: what a worker binds.
    public var routingKeys: [String] { eventHandlers.keys.sorted() }
}
