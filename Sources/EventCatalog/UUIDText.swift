import Foundation

/// UUIDs to and from their text form without Foundation's `sscanf`/`snprintf` path, which
/// showed in the worker's profile (a parse and a format per event).
extension UUID {
    /// Parses the 36-character form (`8-4-4-4-12` hex digits, either case); `nil` otherwise.
    public init?(text: String) {
        var text = text
        let parsed: uuid_t? = text.withUTF8 { bytes -> uuid_t? in
            guard bytes.count == 36 else { return nil }
            var out = [UInt8](repeating: 0, count: 16)
            var index = 0
            var position = 0
            while position < 36 {
                if position == 8 || position == 13 || position == 18 || position == 23 {
                    guard bytes[position] == UInt8(ascii: "-") else { return nil }
                    position += 1
                    continue
                }
                guard let high = Self.nibble(bytes[position]), let low = Self.nibble(bytes[position + 1]) else {
                    return nil
                }
                out[index] = high << 4 | low
                index += 1
                position += 2
            }
            return (out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7],
                    out[8], out[9], out[10], out[11], out[12], out[13], out[14], out[15])
        }
        guard let parsed else { return nil }
        self.init(uuid: parsed)
    }

    /// The lowercase 36-character form (what the wire carries).
    public var lowercaseText: String {
        let digits = Array("0123456789abcdef".utf8)
        return withUnsafeBytes(of: uuid) { raw in
            String(unsafeUninitializedCapacity: 36) { out in
                var position = 0
                for (index, byte) in raw.enumerated() {
                    if index == 4 || index == 6 || index == 8 || index == 10 {
                        out[position] = UInt8(ascii: "-")
                        position += 1
                    }
                    out[position] = digits[Int(byte >> 4)]
                    out[position + 1] = digits[Int(byte & 0x0f)]
                    position += 2
                }
                return 36
            }
        }
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
