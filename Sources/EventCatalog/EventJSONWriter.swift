import Foundation

/// An event that writes its own JSON: exactly the bytes ``EventJSON/encode(_:)`` gives with
/// `JSONEncoder` (sorted keys, slashes not escaped), without its containers and boxes — the
/// encoder is the largest single cost of a write in returns-api's profile. Tests compare
/// the two on many values.
public protocol EventJSONWritable {
    func writeJSON(to writer: inout EventJSONWriter)
}

/// Writes JSON as `JSONEncoder` formats it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f` and
/// `\u00XX` escapes in strings, other characters as they are; a double as its shortest
/// round-trip form without a trailing `.0`.
public struct EventJSONWriter {
    public private(set) var bytes: [UInt8] = []
    /// Whether a value JSON cannot carry was given (see ``double(_:)``).
    public private(set) var isInvalid = false
    /// Whether the next key or value follows another one in its object or array.
    private var needsComma = false

    public init(capacity: Int = 128) { bytes.reserveCapacity(capacity) }

    /// `{`, what `fields` writes, `}`. Keys are written with ``key(_:)``, in sorted order (what
    /// `.sortedKeys` gives), each followed by its value.
    public mutating func object(_ fields: (inout EventJSONWriter) -> Void) {
        separate()
        bytes.append(UInt8(ascii: "{"))
        needsComma = false
        fields(&self)
        bytes.append(UInt8(ascii: "}"))
        needsComma = true
    }

    /// `"key":` — a key that needs no escaping.
    public mutating func key(_ key: StaticString) {
        separate()
        bytes.append(UInt8(ascii: "\""))
        key.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
        needsComma = false
    }

    /// `[`, each element written by `element`, `]`.
    public mutating func array<C: Collection>(_ items: C, _ element: (inout EventJSONWriter, C.Element) -> Void) {
        separate()
        bytes.append(UInt8(ascii: "["))
        needsComma = false
        for item in items { element(&self, item) }
        bytes.append(UInt8(ascii: "]"))
        needsComma = true
    }

    private mutating func separate() {
        if needsComma { bytes.append(UInt8(ascii: ",")) }
    }

    public mutating func string(_ value: String) {
        separate()
        defer { needsComma = true }
        bytes.append(UInt8(ascii: "\""))
        var value = value
        value.withUTF8 { utf8 in
            var start = 0
            for (i, c) in utf8.enumerated() where c < 0x20 || c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") {
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<i]))
                start = i + 1
                switch c {
                case UInt8(ascii: "\""): bytes.append(contentsOf: [92, 34])
                case UInt8(ascii: "\\"): bytes.append(contentsOf: [92, 92])
                case 0x0A: bytes.append(contentsOf: [92, UInt8(ascii: "n")])
                case 0x0D: bytes.append(contentsOf: [92, UInt8(ascii: "r")])
                case 0x09: bytes.append(contentsOf: [92, UInt8(ascii: "t")])
                case 0x08: bytes.append(contentsOf: [92, UInt8(ascii: "b")])
                case 0x0C: bytes.append(contentsOf: [92, UInt8(ascii: "f")])
                default:
                    let hex = Array("0123456789abcdef".utf8)
                    bytes.append(contentsOf: [92, UInt8(ascii: "u"), 48, 48, hex[Int(c >> 4)], hex[Int(c & 0xF)]])
                }
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start...]))
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// `null`.
    public mutating func null() {
        separate()
        defer { needsComma = true }
        bytes.append(contentsOf: "null".utf8)
    }

    public mutating func int(_ value: Int) {
        separate()
        defer { needsComma = true }
        bytes.append(contentsOf: String(value).utf8)
    }

    /// A double. JSON has no NaN or infinity: one makes the whole document ``isInvalid``
    /// (`EventJSON` then leaves it to `JSONEncoder`, which throws its own error for it).
    public mutating func double(_ value: Double) {
        guard value.isFinite else {
            isInvalid = true
            return
        }
        separate()
        defer { needsComma = true }
        // The text of `description`, written straight into `bytes`: a `Double` writes itself to
        // a stream from a buffer on the stack, where `description` makes a `String` (allocated
        // past 15 bytes: most correlations). Measured: half the time for 250,000 values.
        var sink = ASCIISink()
        swap(&sink.bytes, &bytes)
        let start = sink.bytes.count
        value.write(to: &sink)
        swap(&sink.bytes, &bytes)
        // `1.0` is written `1`, as JSONEncoder writes it.
        let n = bytes.count
        if n - start > 2, bytes[n - 2] == UInt8(ascii: "."), bytes[n - 1] == UInt8(ascii: "0") { bytes.removeLast(2) }
    }

    /// Appends what is written to it to `bytes`: what `double` hands to a `Double`.
    private struct ASCIISink: TextOutputStream {
        var bytes: [UInt8] = []

        mutating func write(_ string: String) { bytes.append(contentsOf: string.utf8) }

        /// What the standard library's floating-point types call, with their text on the stack.
        mutating func _writeASCII(_ buffer: UnsafeBufferPointer<UInt8>) { bytes.append(contentsOf: buffer) }
    }

    /// A JSON value already written (by another writer's ``bytes``), as is.
    public mutating func raw(_ value: UnsafeRawBufferPointer) {
        separate()
        defer { needsComma = true }
        bytes.append(contentsOf: value)
    }

    /// `"YYYY-MM-DD"`.
    public mutating func date(_ value: CalendarDate) {
        separate()
        defer { needsComma = true }
        bytes.append(UInt8(ascii: "\""))
        func digits(_ v: Int, _ width: Int) {
            var divisor = 1
            for _ in 1..<width { divisor *= 10 }
            var v = v
            while divisor > 0 {
                bytes.append(UInt8(48 + v / divisor % 10))
                v %= divisor
                divisor /= 10
            }
        }
        digits(value.year, 4)
        bytes.append(UInt8(ascii: "-"))
        digits(value.month, 2)
        bytes.append(UInt8(ascii: "-"))
        digits(value.day, 2)
        bytes.append(UInt8(ascii: "\""))
    }
}

extension PricesRecorded: EventJSONWritable {
    public func writeJSON(to writer: inout EventJSONWriter) {
        writer.object { w in
            w.key("count")
            w.int(count)
            w.key("first_date")
            w.date(firstDate)
            w.key("last_date")
            w.date(lastDate)
            w.key("symbol")
            w.string(symbol)
        }
    }
}

extension ReturnsCalculated: EventJSONWritable {
    public func writeJSON(to writer: inout EventJSONWriter) {
        writer.object { w in
            w.key("returns")
            w.array(returns) { w, point in
                w.object { w in
                    w.key("date")
                    w.date(point.date)
                    w.key("value")
                    w.double(point.value)
                }
            }
            w.key("symbol")
            w.string(symbol)
        }
    }
}
