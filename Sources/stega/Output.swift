import Foundation

/// Human tables by default, JSON with `--json`.
enum Output {
    static func table(_ header: [String], _ rows: [[String]]) {
        let widths = header.indices.map { i in ([header[i]] + rows.map { $0[i] }).map(\.count).max() ?? 0 }
        func line(_ cells: [String]) -> String {
            var text = cells.enumerated().map { i, c in c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ")
            while text.hasSuffix(" ") { text.removeLast() }
            return text
        }
        print(line(header))
        print(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  "))
        rows.forEach { print(line($0)) }
    }

    static func json(_ value: Any) {
        let data = (try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        print(String(decoding: data, as: UTF8.self))
    }

    static func number(_ value: Any?) -> String {
        switch value {
        case let d as Double:
            return d == d.rounded() && abs(d) < 1e15 ? String(Int(d)) : String(format: "%.6f", d)
        case let i as Int: return String(i)
        case nil, is NSNull: return "-"
        default: return "\(value!)"
        }
    }

    static var isTerminal: Bool { isatty(STDOUT_FILENO) != 0 }
}
