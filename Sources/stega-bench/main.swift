import ArgumentParser
import CorrelationKernel
import EventCatalog
import Foundation
import GRDB
import HTTPServer
import Logging
import MessageBus
import ServiceRuntime

/// Benchmarks of the project's own kernels, driven by bench/run.py, which runs the
/// baselines (numpy) on the same data in the same run.
@main
struct StegaBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stega-bench", abstract: "Kernels of stega events, timed.",
        subcommands: [Matrix.self, NoopWorker.self])

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

    struct Matrix: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Dense correlation matrix of float64 rows read from a file (row-major).")

        @Option(help: "Input file: rows × cols float64, little-endian.") var input: String
        @Option(help: "Rows (symbols).") var rows: Int
        @Option(help: "Columns (dates).") var cols: Int
        @Option(help: "Timed repetitions.") var repeats: Int = 15
        @Option(help: "Where to write the matrix (float64), for the numeric check.") var output: String?

        func run() throws {
            let data = try Data(contentsOf: URL(fileURLWithPath: input))
            guard data.count == rows * cols * 8 else { throw ValidationError("input has \(data.count) bytes") }
            let flat = data.withUnsafeBytes { Array($0.bindMemory(to: Double.self)) }
            let matrix = (0..<rows).map { Array(flat[($0 * cols)..<($0 * cols + cols)]) }
            var result = CorrelationMatrix.compute(matrix)  // warm-up
            var times: [Double] = []
            for _ in 0..<repeats {
                let start = DispatchTime.now().uptimeNanoseconds
                result = CorrelationMatrix.compute(matrix)
                times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
            }
            if let output {
                try result.withUnsafeBytes { Data($0) }.write(to: URL(fileURLWithPath: output))
            }
            times.sort()
            print("{\"median_ms\": \(times[times.count / 2]), \"min_ms\": \(times[0])}")
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
    static func migrate(_ migrator: inout DatabaseMigrator) {}
    init(database: ServiceDatabase, logger: Logger) {}
    func registerCommandHandlers(_ registry: inout HandlerRegistry) throws {}
    func addRoutes(to router: inout Router, bus: MessageBus) {}
    func registerEventHandlers(_ registry: inout HandlerRegistry) throws {
        registry.on(Tick.self) { _, _ in }
    }
    static var openAPIDocument: [UInt8] { Array("{}".utf8) }
}
