@testable import Correlations
@testable import HTTPServer
import EventCatalog
import Foundation
import Testing

/// The document as `JSONEncoder` writes it: the reference.
private struct Reference: Encodable {
    let symbols: [String]
    let window: Int
    let asOf: CalendarDate?
    let matrix: [[Double?]]

    enum CodingKeys: String, CodingKey { case symbols, window, matrix, asOf = "as_of" }

    /// `as_of` is `null` when unknown (synthesized encoding would leave the key out).
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        if let asOf { try c.encode(asOf, forKey: .asOf) } else { try c.encodeNil(forKey: .asOf) }
        try c.encode(matrix, forKey: .matrix)
        try c.encode(symbols, forKey: .symbols)
        try c.encode(window, forKey: .window)
    }
}

@Suite("GET /correlations document")
struct MatrixBodyTests {
    @Test("written directly, it is the bytes JSONEncoder gives: nulls, repeated rows, any finite double, no as_of, symmetric or not")
    func sameAsJSONEncoder() throws {
        var random = SystemRandomNumberGenerator()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        for round in 0..<200 {
            let size = Int.random(in: 0...7, using: &random)
            let unique = (0..<size).map { "S\($0).X-\(round)" }
            var values: [Double?] = (0..<(size * size)).map { _ in
                switch Int.random(in: 0..<6, using: &random) {
                case 0: return nil
                case 1: return Double.random(in: -1...1, using: &random)
                case 2: return Double.random(in: -1e-9...1e-9, using: &random)
                case 3: return [1, -1, 0, 0.5][Int.random(in: 0..<4, using: &random)]
                case 4:
                    let any = Double(bitPattern: UInt64.random(in: 0...UInt64.max, using: &random))
                    return any.isFinite ? any : 0.25
                default: return Double.random(in: -1e6...1e6, using: &random)
                }
            }
            // Every other round symmetric, as the store's matrices are (a cell's text is then
            // written once, for it and its mirror); else any.
            if round % 2 == 0 {
                for i in 0..<size { for j in 0..<i { values[j * size + i] = values[i * size + j] } }
            }
            // Rows as asked: a symbol may come twice.
            let rows = size == 0 ? [] : (0..<Int.random(in: 1...9, using: &random)).map { _ in Int.random(in: 0..<size, using: &random) }
            let symbols = rows.map { unique[$0] }
            let asOf = round % 3 == 0 ? nil : CalendarDate(daysSinceEpoch: Int.random(in: 0...40_000, using: &random))
            let window = Int.random(in: 2...2520, using: &random)
            let expected = try encoder.encode(Reference(
                symbols: symbols, window: window, asOf: asOf,
                matrix: rows.map { i in rows.map { j in values[i * size + j] } }))
            let written = CorrelationsRoutes.MatrixBody.json(symbols: symbols, window: window, asOf: asOf, rows: rows,
                                                             values: values.map { $0 ?? .nan }, size: size)
            #expect(String(decoding: written, as: UTF8.self) == String(decoding: expected, as: UTF8.self))
        }
    }

    @Test("read as the daemon reads it, in buffers of any size, the document is the same bytes")
    func readInPieces() {
        var random = SystemRandomNumberGenerator()
        let size = 40
        let values = (0..<(size * size)).map { _ in Double.random(in: -1...1, using: &random) }
        let rows = Array(0..<size) + [3, 3]
        let symbols = rows.map { "S\($0)" }
        let whole = CorrelationsRoutes.MatrixBody.json(symbols: symbols, window: 20, asOf: nil, rows: rows,
                                                       values: values, size: size)
        for _ in 0..<20 {
            let body = CorrelationsRoutes.MatrixBody.document(symbols: symbols, window: 20, asOf: nil, rows: rows,
                                                              values: values, size: size)
            var read: [UInt8] = []
            while true {
                var buffer = [UInt8](repeating: 0, count: Int.random(in: 1...700, using: &random))
                let n = buffer.withUnsafeMutableBytes { body.read(into: $0) }
                if n == 0 { break }
                read += buffer[..<n]
            }
            #expect(read == whole)
            // Ended: it stays ended.
            #expect(body.collect().isEmpty)
        }
        #expect(whole.count > 40 * 40 * 10)
    }
}
