import EventCatalog
import Logging
import MessageBus

/// The correlations service's handlers, the same code in the api and the worker.
public struct CorrelationsHandlers: Sendable {
    let store: CorrelationsStore
    let logger: Logger

    public init(store: CorrelationsStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    /// Registers the api's command handlers.
    public func registerCommands(_ registry: inout HandlerRegistry) throws {
        try registry.handle(AddWindow.self) { command, context in
            try await store.addWindow(command.window, context: context)
        }
    }

    /// Registers the worker's event handlers.
    public func registerEvents(_ registry: inout HandlerRegistry) {
        registry.on(ReturnsCalculated.self) { event, context in
            if let updated = try await store.apply(event, context: context) {
                logger.info("correlations updated", metadata: [
                    "symbol": "\(event.symbol)", "returns": "\(event.returns.count)",
                    "windows": "\(updated.windows)", "pairs": "\(updated.pairs)",
                ])
            } else {
                logger.info("event already handled; nothing changed", metadata: ["symbol": "\(event.symbol)"])
            }
        }
        registry.on(WindowAdded.self) { event, context in
            if let updated = try await store.backfill(event, context: context) {
                logger.info("window backfilled", metadata: ["window": "\(event.window)", "pairs": "\(updated.pairs)"])
            } else {
                logger.info("event already handled; nothing changed", metadata: ["window": "\(event.window)"])
            }
        }
    }
}
