import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// UUIDs to and from their text form without Foundation's `sscanf`/`snprintf` path, which
/// showed in the worker's profile (a parse and a format per event).
extension UUID {
    /// A random (version 4) UUID. Its bytes come from ``RandomBytes``, which reads
    /// the kernel's CSPRNG 4 KiB at a time: Foundation's `UUID()` on Linux opens, reads and closes
    /// `/dev/urandom` each time, and `SystemRandomNumberGenerator` is a system call per 8 bytes.
    public static func random() -> UUID {
        var bytes: uuid_t = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &bytes) { raw in
            RandomBytes.fill(raw)
            raw[6] = raw[6] & 0x0F | 0x40  // version 4
            raw[8] = raw[8] & 0x3F | 0x80  // variant 10
        }
        return UUID(uuid: bytes)
    }

    /// Parses the 36-character form (`8-4-4-4-12` hex digits, either case); `nil` otherwise.
    public init?(text: String) {
        var text = text
        var bytes: uuid_t = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        let parsed = text.withUTF8 { utf8 -> Bool in
            guard utf8.count == 36 else { return false }
            return withUnsafeMutableBytes(of: &bytes) { out -> Bool in
                var index = 0
                var position = 0
                while position < 36 {
                    if position == 8 || position == 13 || position == 18 || position == 23 {
                        guard utf8[position] == UInt8(ascii: "-") else { return false }
                        position += 1
                        continue
                    }
                    guard let high = Self.nibble(utf8[position]), let low = Self.nibble(utf8[position + 1]) else {
                        return false
                    }
                    out[index] = high << 4 | low
                    index += 1
                    position += 2
                }
                return true
            }
        }
        guard parsed else { return nil }
        self.init(uuid: bytes)
    }

    /// The lowercase 36-character form (what the wire carries).
    public var lowercaseText: String {
        withUnsafeBytes(of: uuid) { raw in
            String(unsafeUninitializedCapacity: 36) { out in
                var position = 0
                for (index, byte) in raw.enumerated() {
                    if index == 4 || index == 6 || index == 8 || index == 10 {
                        out[position] = UInt8(ascii: "-")
                        position += 1
                    }
                    out[position] = Self.hexDigit(byte >> 4)
                    out[position + 1] = Self.hexDigit(byte & 0x0f)
                    position += 2
                }
                return 36
            }
        }
    }

    private static func hexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") + value - 10
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

/// Bytes from the kernel's CSPRNG (`getrandom(2)`, through glibc's `arc4random_buf`), read 4 KiB at a time and handed out
/// once each: one system call per 256 UUIDs instead of one or more per UUID.
public enum RandomBytes {
    private struct Pool: ~Copyable {
        var bytes = [UInt8](repeating: 0, count: 4096)
        var used = 4096
    }

    private static let pool = Mutex(Pool())

    /// Fills `out` (at most 4 KiB) with random bytes no other call gets.
    public static func fill(_ out: UnsafeMutableRawBufferPointer) {
        precondition(out.count <= 4096)
        pool.withLock { pool in
            if pool.used + out.count > pool.bytes.count {
                // glibc's arc4random_buf: getrandom(2) for the whole buffer, retried as needed.
                pool.bytes.withUnsafeMutableBytes { buffer in arc4random_buf(buffer.baseAddress!, buffer.count) }
                pool.used = 0
            }
            pool.bytes.withUnsafeBytes { buffer in
                out.copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[pool.used..<pool.used + out.count]))
            }
            // Handed-out bytes are not left behind in memory.
            for i in pool.used..<pool.used + out.count { pool.bytes[i] = 0 }
            pool.used += out.count
        }
    }
}
