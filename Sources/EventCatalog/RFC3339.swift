import Foundation

/// Times as RFC 3339 UTC text (`2026-12-04T10:52:50Z`, or `…50.100Z` with milliseconds): the
/// boundary's event timestamps, the log lines' time, the CLI daemon's records.
public enum RFC3339 {
    /// `seconds` since 1970, with `milliseconds` (0–999) when given. A time outside years
    /// 0001–9999 (a publisher's bogus AMQP timestamp) is clamped to that range rather than
    /// trapping in `time_t(_:)`.
    public static func string(seconds: Int, milliseconds: Int? = nil) -> String {
        var time = time_t(min(max(seconds, -62_135_596_800), 253_402_300_799))
        var parts = tm()
        gmtime_r(&time, &parts)
        let date = String(format: "%04d-%02d-%02dT%02d:%02d:%02d", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1,
                          Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
        guard let milliseconds else { return date + "Z" }
        return date + String(format: ".%03dZ", min(max(milliseconds, 0), 999))
    }

    /// `seconds` since 1970 (see ``string(seconds:milliseconds:)``).
    public static func string(_ seconds: Double, milliseconds: Bool = false) -> String {
        let clamped = seconds.isNaN ? 0 : min(max(seconds, -62_135_596_800), 253_402_300_799)
        guard milliseconds else { return string(seconds: Int(clamped.rounded(.down))) }
        // To the nearest millisecond: …400.123 is stored as …400.12299990…, still 123 ms.
        let total = Int((clamped * 1000).rounded())
        let (whole, rest) = total.quotientAndRemainder(dividingBy: 1000)
        return rest < 0 ? string(seconds: whole - 1, milliseconds: rest + 1000) : string(seconds: whole, milliseconds: rest)
    }

    /// `date` (see ``string(seconds:milliseconds:)``).
    public static func string(_ date: Date, milliseconds: Bool = false) -> String {
        string(date.timeIntervalSince1970, milliseconds: milliseconds)
    }
}
