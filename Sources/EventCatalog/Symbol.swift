/// Ticker symbols: `^[A-Z0-9.\-]{1,15}$`.
public enum Symbol {
    public static func isValid(_ text: String) -> Bool {
        let utf8 = text.utf8
        guard (1...15).contains(utf8.count) else { return false }
        return utf8.allSatisfy { c in
            (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(c) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c)
                || c == UInt8(ascii: ".") || c == UInt8(ascii: "-")
        }
    }
}
