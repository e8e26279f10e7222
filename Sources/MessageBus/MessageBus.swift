import EventCatalog
import Foundation
import Logging
import Synchronization

/// A service's internal message bus: dispatches commands and events to their handlers.
///
/// Handlers store the events they raise in the transaction of their write (see
/// ``HandlerContext``); the bus only checks that they did: an event raised and not stored, or
/// not declared, fails the message. A command's error reaches the caller. An event may have
/// many handlers; a failing one is logged and counted while the others run, and
/// ``dispatch(_:)`` then throws so the consumer can retry.
public final class MessageBus: Sendable {
    /// The service name, used as `app_id` of raised events.
    public let appId: String
    private let registry: HandlerRegistry
    private let logger: Logger
    private let failures = Atomic<Int>(0)

    public init(appId: String, registry: HandlerRegistry, logger: Logger = Logger(label: "stega.bus")) {
        self.appId = appId
        self.registry = registry
        self.logger = logger
    }

    /// Routing keys with at least one event handler.
    public var routingKeys: [String] { registry.routingKeys }

    /// Routing keys the handlers declare they raise.
    public var raisedRoutingKeys: [String] { registry.raisedRoutingKeys }

    /// How many event handler calls have failed since start.
    public var handlerFailures: Int { failures.load(ordering: .relaxed) }

    /// Runs the one handler of `command`.
    public func send<C: Command>(_ command: C, metadata: MessageMetadata) async throws {
        guard let registered = registry.commandHandlers[ObjectIdentifier(C.self)] else {
            throw BusError(.noHandler, "no handler for command \(C.name)")
        }
        let context = HandlerContext(metadata: metadata, appId: appId, declared: registered.raises)
        try await registered.handler(command, context)
        try context.checkStored(C.name)
    }

    /// Runs every handler of `envelope`'s routing key; throws when none exists, when the
    /// event cannot be decoded, or when any handler failed (after all of them ran).
    public func dispatch(_ envelope: EventEnvelope) async throws {
        if let error = await dispatch([envelope])[0] { throw error }
    }

    /// Dispatches a worker's batch of events in delivery order: each run of consecutive events
    /// of one routing key goes to each handler of that key at once (a batch handler applies it
    /// in one transaction; a per-event handler is called for each). One result per envelope,
    /// as ``dispatch(_:)`` would throw it.
    public func dispatch(_ envelopes: [EventEnvelope]) async -> [(any Error)?] {
        var results = [(any Error)?](repeating: nil, count: envelopes.count)
        var start = 0
        while start < envelopes.count {
            let key = envelopes[start].routingKey
            var end = start + 1
            while end < envelopes.count, envelopes[end].routingKey == key { end += 1 }
            defer { start = end }
            let run = Array(envelopes[start..<end])
            guard let handlers = registry.eventHandlers[key], !handlers.isEmpty else {
                for index in start..<end { results[index] = BusError(.noHandler, "no handler for routing key \(key)") }
                continue
            }
            var firstErrors = [(any Error)?](repeating: nil, count: run.count)
            for registered in handlers {
                let errors = await registered.handler(run) { [appId] index in
                    HandlerContext(metadata: MessageMetadata(handling: run[index]), appId: appId,
                                   handledEventId: run[index].eventId, declared: registered.raises)
                }
                for (index, error) in errors.enumerated() {
                    guard let error else { continue }
                    if firstErrors[index] == nil { firstErrors[index] = error }
                    if let bus = error as? BusError, bus.code == .undecodable { continue }
                    failures.add(1, ordering: .relaxed)
                    // Metadata built only here, off the path of events that succeed.
                    logger.error("event handler failed", metadata: [
                        "amqp.routing_key": "\(key)",
                        "bus.event_id": "\(run[index].eventId.lowercaseText)",
                        "bus.correlation_id": "\(run[index].correlationId ?? "")",
                        "error": "\(error)",
                    ])
                }
            }
            for (index, error) in firstErrors.enumerated() {
                guard let error else { continue }
                if let bus = error as? BusError, bus.code == .undecodable {
                    results[start + index] = bus
                } else {
                    results[start + index] = BusError(.handlersFailed, "\(error)", cause: error)
                }
            }
        }
        return results
    }
}
