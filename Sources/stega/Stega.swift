import ArgumentParser
import CLIDaemon
import EventCatalog
import Foundation

/// `stega`: the command line of stega events — writes that wait for their outcome, reads
/// as tables (or `--json`), live events, and the event catalog.
@main
struct Stega: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stega",
        abstract: "Talk to the stega services (STEGA_RETURNS_URL, STEGA_CORRELATIONS_URL, STEGA_BOUNDARY_URL).",
        subcommands: [Prices.self, ReturnsCmd.self, Summary.self, CorrelationsCmd.self, Windows.self,
                      OperationCmd.self, Watch.self, Events.self, WaitCmd.self, Ops.self, DaemonCmd.self])

    /// Runs `body`, printing a failure as one line on standard error with exit code 1.
    static func guarded(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as CLIError {
            throw fail(error.description)
        } catch let error as DaemonError {
            throw fail(error.description)
        }
    }

    /// Prints `message` as the one line of a failure; the exit code 1 to throw.
    static func fail(_ message: String) -> ExitCode {
        FileHandle.standardError.write(Data("stega: \(message)\n".utf8))
        return ExitCode(1)
    }
}

struct Common: ParsableArguments {
    @Flag(help: "Print JSON instead of tables.") var json = false
}

struct WaitOptions: ParsableArguments {
    @Flag(help: "Wait for the outcome through the boundary; exit 0 on success, 1 on failure, 2 on time-out.")
    var wait = false
    @Option(help: "Seconds to wait for the outcome.") var timeout: Double = 60
}

/// Submits a write and, with `--wait`, follows it to its outcome. Without `--wait` the
/// operation is registered with the daemon when one runs (`stega ops` shows its outcome).
func submitted(_ response: Any, command: String, common: Common, wait: WaitOptions) async throws {
    guard let operation = (response as? [String: Any])?["operation_id"] as? String else {
        throw CLIError("the service did not return an operation id")
    }
    guard wait.wait else {
        var recorded = false
        if case .running(let daemon) = DaemonClient.reach(DaemonPaths(), timeout: 5) {
            recorded = (try? daemon.ask(["request": "register", "operation_id": operation, "command": command,
                                         "submitted": Date().timeIntervalSince1970]))?["type"] as? String == "registered"
        }
        common.json ? Output.json(["operation_id": operation])
            : print("accepted: operation \(operation)" + (recorded ? " (the daemon records its outcome: stega ops)" : ""))
        return
    }
    try followOutcome(operation, command: command, json: common.json, timeout: wait.timeout)
}

/// Follows `operation` to its outcome, through the daemon when it runs and over the
/// boundary's WebSocket otherwise (the same output either way): its events as they come,
/// then the status; exit 0 on success, 1 on failure, 2 on time-out.
func followOutcome(_ operation: String, command: String, json: Bool, timeout: Double) throws {
    var events: [[String: Any]] = []
    let live = Output.isTerminal && !json
    if !json { print("operation \(operation)") }
    let progress: (String, [String: Any]) -> Void = { key, event in
        events.append(event)
        guard !json else { return }
        if live {
            FileHandle.standardOutput.write(Data("\r\u{1B}[K  \(events.count) events, last: \(key)".utf8))
        } else {
            print("  event \(key)")
        }
    }
    let status: String
    do {
        if case .running(let daemon) = DaemonClient.reach(DaemonPaths(), timeout: 5) {
            status = try DaemonWait(client: daemon).wait(for: operation, command: command, timeout: timeout, progress: progress)
        } else {
            status = try Follower(endpoints: Endpoints()).wait(for: operation, timeout: timeout, progress: progress)
        }
    } catch let error as CLIError where error.description.hasPrefix("no outcome") {
        if live { print("") }
        FileHandle.standardError.write(Data("stega: \(error)\n".utf8))
        throw ExitCode(2)
    } catch let error as DaemonError {
        throw CLIError(error.description)
    }
    if live { print("") }
    if json {
        Output.json(["operation_id": operation, "status": status, "events": events])
    } else {
        print("\(status): \(events.count) events")
    }
    if status != "succeeded" { throw ExitCode(status == "timed_out" ? 2 : 1) }
}

struct Prices: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Record prices.", subcommands: [Add.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Record closing prices from a CSV file (date,close).")
        @Argument(help: "The symbol.") var symbol: String
        @Option(help: "CSV with a date,close header.") var file: String
        @OptionGroup var wait: WaitOptions
        @OptionGroup var common: Common

        func run() async throws {
            try await Stega.guarded {
                guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw CLIError("cannot read \(file)") }
                var prices: [[String: Any]] = []
                for (number, line) in text.split(whereSeparator: \.isNewline).enumerated() {
                    let fields = line.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                    if number == 0, fields.first?.lowercased() == "date" { continue }
                    guard fields.count == 2, let close = Double(fields[1]) else {
                        throw CLIError("\(file):\(number + 1): expected date,close")
                    }
                    prices.append(["date": fields[0], "close": close])
                }
                let response = try await HTTP.post(Endpoints().returns, "prices", json: ["symbol": symbol, "prices": prices])
                try await submitted(response, command: "record_prices", common: common, wait: wait)
            }
        }
    }
}

struct ReturnsCmd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "returns", abstract: "Daily returns of a symbol.")
    @Argument var symbol: String
    @Option(help: "simple or log") var kind = "simple"
    @OptionGroup var common: Common

    func run() async throws {
        try await Stega.guarded {
            let body = try await HTTP.get(Endpoints().returns, "returns/\(symbol)", query: ["kind": kind]) as? [String: Any] ?? [:]
            if common.json { return Output.json(body) }
            let rows = (body["returns"] as? [[String: Any]] ?? []).map { [$0["date"] as? String ?? "", Output.number($0["value"])] }
            Output.table(["date", "\(kind) return"], rows)
        }
    }
}

struct Summary: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Summary statistics of a symbol's returns.")
    @Argument var symbol: String
    @OptionGroup var common: Common

    func run() async throws {
        try await Stega.guarded {
            let body = try await HTTP.get(Endpoints().returns, "returns/\(symbol)/summary") as? [String: Any] ?? [:]
            if common.json { return Output.json(body) }
            let keys = ["symbol", "count", "first_date", "last_date", "mean", "volatility", "cumulative_return", "max_drawdown"]
            Output.table(["field", "value"], keys.map { [$0, Output.number(body[$0])] })
        }
    }
}

struct CorrelationsCmd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "correlations", abstract: "Correlation matrix of symbols.")
    @Argument var symbols: [String]
    @Option var window = 60
    @OptionGroup var common: Common

    func run() async throws {
        try await Stega.guarded {
            let body = try await HTTP.get(Endpoints().correlations, "correlations",
                                          query: ["symbols": symbols.joined(separator: ","), "window": String(window)])
                as? [String: Any] ?? [:]
            if common.json { return Output.json(body) }
            let names = body["symbols"] as? [String] ?? []
            let matrix = body["matrix"] as? [[Any]] ?? []
            Output.table([""] + names, zip(names, matrix).map { [$0] + $1.map { Output.number($0) } })
            print("window \(window), as of \(body["as_of"] as? String ?? "-")")
        }
    }
}

struct Windows: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Correlation windows.", subcommands: [Add.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Track a rolling window of N returns.")
        @Argument var window: Int
        @OptionGroup var wait: WaitOptions
        @OptionGroup var common: Common

        func run() async throws {
            try await Stega.guarded {
                let response = try await HTTP.post(Endpoints().correlations, "windows", json: ["window": window])
                try await submitted(response, command: "add_window", common: common, wait: wait)
            }
        }
    }
}

struct OperationCmd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "operation", abstract: "An operation's status and events.")
    @Argument var id: String
    @OptionGroup var common: Common

    func run() async throws {
        try await Stega.guarded {
            let body = try await HTTP.get(Endpoints().boundary, "operations/\(id)") as? [String: Any] ?? [:]
            if common.json { return Output.json(body) }
            print("operation \(id): \(body["status"] as? String ?? "?")")
            let rows = (body["events"] as? [[String: Any]] ?? []).map {
                [$0["timestamp"] as? String ?? "", $0["routing_key"] as? String ?? "", $0["event_id"] as? String ?? ""]
            }
            Output.table(["timestamp", "routing key", "event id"], rows)
        }
    }
}

struct Watch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print live events, one per line (Ctrl-C to stop).")
    @Argument(help: "A routing-key pattern: * one word, # zero or more.") var pattern = "#"
    @OptionGroup var common: Common

    func run() async throws {
        try await Stega.guarded {
            try Follower(endpoints: Endpoints()).watch(pattern) { event in
                func json(_ value: Any) -> String {
                    (try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes]))
                        .map { String(decoding: $0, as: UTF8.self) } ?? ""
                }
                // Unbuffered: one line per event, at once, also into a pipe.
                let line = common.json ? json(event)
                    : "\(event["timestamp"] as? String ?? "") \(event["routing_key"] as? String ?? "") \(event["correlation_id"] as? String ?? "") \(json(event["payload"] ?? [:]))"
                FileHandle.standardOutput.write(Data((line + "\n").utf8))
            }
        }
    }
}

struct Events: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The event catalog: who publishes and consumes each routing key.")
    @Flag(help: "Print the catalog as an AsyncAPI 3.0 document.") var asyncapi = false
    @OptionGroup var common: Common

    func run() async throws {
        if asyncapi {
            let data = try JSONSerialization.data(withJSONObject: AsyncAPI.document(), options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
            return print(String(decoding: data, as: UTF8.self))
        }
        let rows = Catalog.entries.map { entry -> [String] in
            let resolves = Workflow.all.filter { $0.resolvedBy == entry.routingKey }.map(\.endpoint)
                + (Workflow.isFailure(entry.routingKey) ? ["any operation (failure)"] : [])
            return [entry.routingKey, entry.publishers.joined(separator: ", "), entry.consumers.joined(separator: ", "),
                    resolves.joined(separator: ", ")]
        }
        if common.json {
            return Output.json(rows.map { ["routing_key": $0[0], "publishers": $0[1], "consumers": $0[2], "resolves": $0[3]] })
        }
        Output.table(["routing key", "published by", "consumed by", "resolves"], rows)
    }
}
