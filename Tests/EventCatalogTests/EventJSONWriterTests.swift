import EventCatalog
import Foundation
import Testing

@Suite("Events that write their own JSON")
struct EventJSONWriterTests {
    /// Strings with every kind of character the writer treats differently.
    static func text(_ generator: inout some RandomNumberGenerator) -> String {
        let pieces = ["A", "z", "0", ".", "-", "\"", "\\", "/", "\n", "\r", "\t", "\u{08}", "\u{0C}", "\u{01}",
                      "\u{1F}", "\u{7F}", "é", "€", "\u{2028}", "😀", " ", "BRK.B"]
        return (0..<Int.random(in: 0...12, using: &generator))
            .map { _ in pieces.randomElement(using: &generator)! }.joined()
    }

    static func date(_ generator: inout some RandomNumberGenerator) -> CalendarDate {
        CalendarDate(daysSinceEpoch: Int.random(in: -719_162...2_932_896, using: &generator))  // 0001-01-01...9999-12-31
    }

    static func double(_ generator: inout some RandomNumberGenerator) -> Double {
        switch Int.random(in: 0..<5, using: &generator) {
        case 0: return Double.random(in: -0.2...0.2, using: &generator)
        case 1: return (Double.random(in: -1000...1000, using: &generator) * 100).rounded() / 100
        case 2: return [0, -0.0, 1, -1, 1e16, 1e17, 1e-5, .leastNonzeroMagnitude, .greatestFiniteMagnitude, 0.1].randomElement(using: &generator)!
        default:
            // Any finite bit pattern: huge, tiny, subnormal.
            var bits = generator.next() as UInt64
            while !Double(bitPattern: bits).isFinite { bits = generator.next() }
            return Double(bitPattern: bits)
        }
    }

    @Test("PricesRecorded: the same bytes as JSONEncoder, for many values")
    func pricesRecorded() throws {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<3000 {
            let event = PricesRecorded(symbol: Self.text(&generator), firstDate: Self.date(&generator),
                                       lastDate: Self.date(&generator), count: Int.random(in: Int.min...Int.max, using: &generator))
            let fast = try EventJSON.encode(event)
            let reference = try EventJSON.encodeWithFoundation(event)
            #expect(fast == reference, "\(String(decoding: fast, as: UTF8.self)) vs \(String(decoding: reference, as: UTF8.self))")
            #expect(try EventJSON.decode(PricesRecorded.self, from: fast) == event)
        }
    }

    @Test("ReturnsCalculated: the same bytes as JSONEncoder, for many values")
    func returnsCalculated() throws {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<1500 {
            let returns = (0..<Int.random(in: 0...20, using: &generator)).map { _ in
                DatedValue(date: Self.date(&generator), value: Self.double(&generator))
            }
            let event = ReturnsCalculated(symbol: Self.text(&generator), returns: returns)
            let fast = try EventJSON.encode(event)
            let reference = try EventJSON.encodeWithFoundation(event)
            #expect(fast == reference, "\(String(decoding: fast, as: UTF8.self)) vs \(String(decoding: reference, as: UTF8.self))")
        }
    }

    @Test("a value JSON cannot carry fails as JSONEncoder fails it", arguments: [Double.nan, .infinity, -.infinity])
    func nonFinite(value: Double) throws {
        let event = ReturnsCalculated(symbol: "AAPL", returns: [DatedValue(date: CalendarDate("2024-01-02")!, value: value)])
        #expect(throws: EncodingError.self) { try EventJSON.encode(event) }
        var writer = EventJSONWriter()
        event.writeJSON(to: &writer)
        #expect(writer.isInvalid)
    }
}
