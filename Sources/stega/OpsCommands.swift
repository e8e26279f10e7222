import ArgumentParser
import CLIDaemon
import EventCatalog
import Foundation
import HTTPServer

/// `stega ops`: the operations the daemon recorded, from `operations.sqlite` (so outcomes
/// that arrived while no CLI ran are there); `--follow` prints outcomes as they arrive.
struct Ops: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Recent operations and their outcomes, as the daemon recorded them.")
    @Flag(help: "Every recorded operation, not only the 20 newest.") var all = false
    @Flag(help: "Print each outcome as it arrives (through the daemon; Ctrl-C to stop).") var follow = false
    @Flag(help: "Print JSON (an array; one object per line with --follow).") var json = false

    func run() throws {
        let paths = DaemonPaths()
        if follow { return try followOutcomes(paths) }
        let records: [OperationRecord]
        do {
            records = try OperationsStore.reader(path: paths.database)?.list(limit: all ? nil : 20) ?? []
        } catch {
            throw Stega.fail("cannot read \(paths.database): \(error)")
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(records.map(\.fields)), as: UTF8.self))
        } else {
            Output.table(["operation", "command", "submitted", "status", "events", "duration"], records.map(Self.row))
        }
        if case .running = DaemonClient.reach(paths, timeout: 2) {} else if !json {
            FileHandle.standardError.write(Data("stega: the daemon is not running: writes are not recorded until `stega daemon start`\n".utf8))
        }
    }

    static func row(_ record: OperationRecord) -> [String] {
        [record.operationId, record.command, RFC3339.string(record.submitted, milliseconds: true), record.status, String(record.events),
         record.duration.map { String(format: "%.1f s", $0) } ?? "-"]
    }

    private func followOutcomes(_ paths: DaemonPaths) throws {
        let client: DaemonClient
        do {
            client = try DaemonClient.connect(paths)
            try client.send(["request": "follow"])
            _ = try client.receive()  // {"type":"following"}
        } catch {
            throw Stega.fail("\(error)")
        }
        let bell = Output.isTerminal && !json
        // Unbuffered: each outcome at once, also into a pipe.
        func emit(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
        if !json { emit("following outcomes (Ctrl-C to stop)") }
        while true {
            let message: [String: Any]?
            do {
                client.setTimeout(3600)
                message = try client.receive()
            } catch is DaemonTimeout {
                continue
            } catch {
                throw Stega.fail("\(error)")
            }
            guard var message else { throw Stega.fail("the daemon stopped") }
            guard message["type"] as? String == "outcome" else { continue }
            message["type"] = nil
            if json {
                emit(String(decoding: try JSONSerialization.data(withJSONObject: message, options: [.sortedKeys]), as: UTF8.self))
                continue
            }
            let status = message["status"] as? String ?? "?"
            let duration = (message["duration"] as? Double).map { String(format: "%.1f s", $0) } ?? "-"
            let line = [Self.clock(), message["operation_id"] as? String ?? "?", message["command"] as? String ?? "?", status,
                        "\(Output.number(message["events"])) events", duration].joined(separator: "  ")
            // The terminal bell on a failure, so it is noticed in another window.
            emit(line + (bell && status != "succeeded" ? "\u{7}" : ""))
        }
    }

    /// The local time of day, for a live line.
    static func clock() -> String {
        var now = time(nil)
        var parts = tm()
        localtime_r(&now, &parts)
        return String(format: "%02d:%02d:%02d", Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
    }
}

/// `stega wait <id>`: an operation's outcome, through the daemon when it runs.
struct WaitCmd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wait", abstract: "Wait for an operation's outcome (exit 0 on success, 1 on failure, 2 on time-out).")
    @Argument(help: "The operation id.") var id: String
    @Option(help: "Seconds to wait for the outcome.") var timeout: Double = 60
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        guard UUID(uuidString: id) != nil else { throw Stega.fail("the operation id must be a UUID, got \(id)") }
        do {
            try followOutcome(id.lowercased(), command: "-", json: json, timeout: timeout)
        } catch let error as CLIError {
            throw Stega.fail(error.description)
        }
    }
}

/// Waiting for an outcome through the daemon: it replays the events it counted, then sends
/// new ones and the outcome.
struct DaemonWait {
    let client: DaemonClient

    func wait(for operation: String, command: String, timeout: Double, progress: (String, [String: Any]) -> Void) throws -> String {
        try client.send(["request": "wait", "operation_id": operation, "command": command,
                         "submitted": Date().timeIntervalSince1970])
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let remaining = deadline.timeIntervalSinceNow
            guard remaining > 0 else { throw CLIError("no outcome for \(operation) after \(Int(timeout)) s") }
            client.setTimeout(remaining)
            let message: [String: Any]?
            do {
                message = try client.receive()
            } catch is DaemonTimeout {
                throw CLIError("no outcome for \(operation) after \(Int(timeout)) s")
            }
            guard let message else { throw CLIError("the daemon closed the connection") }
            switch message["type"] as? String {
            case "event": progress(message["routing_key"] as? String ?? "", message)
            case "operation": return message["status"] as? String ?? "unknown"
            default: continue
            }
        }
    }
}
