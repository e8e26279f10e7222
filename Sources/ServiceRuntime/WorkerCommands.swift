import AMQPTransport
import ArgumentParser
import Foundation

/// The command line of `<service>-worker`: no arguments runs the worker; the operator
/// commands move messages back where they can be handled.
///
/// ```sh
/// returns-worker                            # consume and handle events
/// returns-worker replay-dead-letters        # <service>.events.dead → <service>.events
/// returns-worker replay-unroutable          # events.unroutable → the exchange
/// ```
public enum WorkerCommands {
    struct ReplayOptions: ParsableArguments {
        @Option(help: "Move at most this many messages.")
        var limit: Int = 100_000
    }

    /// Runs the worker, or the operator command named in `arguments`; returns the exit code.
    public static func main<M: ServiceModule>(_ module: M.Type, arguments: [String] = CommandLine.arguments) async -> Int32 {
        let rest = Array(arguments.dropFirst())
        guard let command = rest.first else { return await WorkerRuntime.run(module) }
        let process = "\(M.name)-worker"
        switch command {
        case "replay-dead-letters", "replay-unroutable":
            let options = ReplayOptions.parseOrExit(Array(rest.dropFirst()))
            do {
                let config = try ServiceConfig(service: M.name, process: process)
                let report = command == "replay-dead-letters"
                    ? try AMQPAdmin.replayDeadLetters(settings: config.amqp, service: M.name, limit: options.limit,
                                                      queueType: config.queueType, singleActiveConsumer: M.singleActiveConsumer)
                    : try AMQPAdmin.replayUnroutable(settings: config.amqp, limit: options.limit, queueType: config.queueType)
                print("\(command): \(report)")
                return 0
            } catch {
                FileHandle.standardError.write(Data("\(process) \(command): \(error)\n".utf8))
                return 1
            }
        case "-h", "--help", "help":
            print("""
                USAGE: \(process) [replay-dead-letters | replay-unroutable] [--limit N]

                  (no command)          consume and handle \(M.name)'s events (configuration: STEGA_* variables)
                  replay-dead-letters   move \(M.name).events.dead back to \(M.name).events, attempts reset
                  replay-unroutable     publish events.unroutable to the exchange again (those still
                                        unroutable stay)
                """)
            return 0
        default:
            FileHandle.standardError.write(Data("\(process): unknown command \(command); see --help\n".utf8))
            return 2
        }
    }
}
