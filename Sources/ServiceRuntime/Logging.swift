import EventCatalog
import Foundation
import Logging

/// How log lines are written.
public enum LogFormat: String, Sendable, CaseIterable {
    /// `2026-11-28T10:00:00Z info returns-worker: returns calculated symbol=AAPL …`
    case text
    /// One JSON object per line.
    case json
}

/// Bootstraps swift-log once per process (call from `main` only).
public enum LoggingSetup {
    public static func bootstrap(process: String, level: Logger.Level, format: LogFormat) {
        LoggingSystem.bootstrap { label in
            var handler = LineLogHandler(process: process, label: label, format: format)
            handler.logLevel = level
            return handler
        }
    }
}

/// Writes one line per message to standard error, as text or JSON.
public struct LineLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    let process: String
    let label: String
    let format: LogFormat

    public init(process: String, label: String, format: LogFormat) {
        self.process = process
        self.label = label
        self.format = format
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let explicit = event.metadata { all.merge(explicit) { $1 } }
        if let error = event.error { all["error"] = "\(error)" }
        let line = Self.render(process: process, label: label, format: format, level: event.level,
                               message: event.message, metadata: all)
        FileHandle.standardError.write(Data(line.utf8))
    }

    /// One log line, newline included.
    public static func render(process: String, label: String, format: LogFormat, level: Logger.Level,
                              message: Logger.Message, metadata: Logger.Metadata) -> String {
        let timestamp = Self.timestamp()
        switch format {
        case .text:
            let pairs = metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            return "\(timestamp) \(level) \(process): \(message)\(pairs.isEmpty ? "" : " " + pairs)\n"
        case .json:
            var object: [String: Any] = [
                "ts": timestamp, "level": level.rawValue, "service": process, "logger": label,
                "message": message.description,
            ]
            for (key, value) in metadata { object[key] = Self.plain(value) }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            return String(decoding: data, as: UTF8.self) + "\n"
        }
    }

    static func plain(_ value: Logger.MetadataValue) -> Any {
        switch value {
        case .string(let s): return s
        case .stringConvertible(let s): return s.description
        case .array(let a): return a.map(plain)
        case .dictionary(let d): return d.mapValues(plain)
        }
    }

    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return RFC3339.string(seconds: now.tv_sec, milliseconds: now.tv_nsec / 1_000_000)
    }
}
