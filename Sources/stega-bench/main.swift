import ArgumentParser
import EventCatalog
import Foundation
import GRDB
import HTTPServer
import Logging
import MessageBus
import ServiceRuntime

/// What bench/run.py runs beside the services: the worker runtime with a no-op handler.
@main
struct StegaBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stega-bench", abstract: "Parts of stega events, for make bench.",
        subcommands: [NoopWorker.self])

    struct NoopWorker: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "noop-worker",
            abstract: "The worker runtime (consumer, bus, health, metrics) with one no-op handler of bench.events.tick.",
            discussion: "Configured like any worker (STEGA_* variables); its queue is bench.events.")

        func run() async throws {
            let code = await WorkerRuntime.run(NoopModule.self)
            if code != 0 { throw ExitCode(code) }
        }
    }
}

/// The event the no-op worker handles: `{"n": 1}` on `bench.events.tick`.
struct Tick: Event {
    static let routingKey = "bench.events.tick"
    var n: Int
}

/// A service whose worker handles `bench.events.tick` and does nothing else: what is left
/// is the cost of the worker runtime itself (consume, decode, dispatch, ack).
struct NoopModule: ServiceModule {
    static let name = "bench"
    init(database: ServiceDatabase, logger: Logger) {}
    func registerCommandHandlers(_ registry: inout HandlerRegistry) throws {}
    func addRoutes(to router: inout Router, bus: MessageBus) {}
    func registerEventHandlers(_ registry: inout HandlerRegistry) throws {
        registry.on(Tick.self) { _, _ in }
    }
    static var openAPIDocument: [UInt8] { Array("{}".utf8) }
}
