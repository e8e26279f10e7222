import Foundation

/// Reads settings from environment variables; any `X` may instead be given as `X_FILE`,
/// naming a file that holds the value (Docker secrets). A set `X` wins over `X_FILE`. A file
/// that holds only white space is refused: an empty `api_token` secret would otherwise turn
/// the token off without a word (to run without a token, leave `X_FILE` unset).
public struct Environment: Sendable {
    private let values: [String: String]

    public init(_ values: [String: String] = ProcessInfo.processInfo.environment) {
        self.values = values
    }

    /// The value of `name`, from `name` or the file named by `name_FILE`; `nil` when neither is set.
    public func string(_ name: String) throws -> String? {
        if let value = values[name], !value.isEmpty { return value }
        if let path = values[name + "_FILE"], !path.isEmpty {
            let text: String
            do {
                text = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            } catch {
                throw ConfigError("\(name)_FILE: cannot read \(path): \(error.localizedDescription)")
            }
            guard !text.isEmpty else {
                throw ConfigError("\(name)_FILE: \(path) holds no value (only white space); write one, or unset \(name)_FILE")
            }
            return text
        }
        return nil
    }

    /// The value of `name`, or `defaultValue`.
    public func string(_ name: String, default defaultValue: String) throws -> String {
        try string(name) ?? defaultValue
    }

    /// An integer setting within `range`.
    public func int(_ name: String, default defaultValue: Int, range: ClosedRange<Int>) throws -> Int {
        guard let text = try string(name) else { return defaultValue }
        guard let value = Int(text), range.contains(value) else {
            throw ConfigError("\(name) must be an integer in \(range.lowerBound)...\(range.upperBound), got \(text)")
        }
        return value
    }

    /// One of `choices`.
    public func choice(_ name: String, default defaultValue: String, _ choices: [String]) throws -> String {
        let value = try string(name, default: defaultValue).lowercased()
        guard choices.contains(value) else {
            throw ConfigError("\(name) must be one of \(choices.joined(separator: ", ")), got \(value)")
        }
        return value
    }
}

/// A setting is missing or malformed.
public struct ConfigError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
