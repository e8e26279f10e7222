import EventCatalog
import Foundation
import HTTPServer
import MessageBus
import ServiceRuntime

/// The REST API of the correlations service (DESIGN.md "Read views").
public struct CorrelationsRoutes: Sendable {
    let store: CorrelationsStore
    let bus: MessageBus

    /// At most this many symbols in one matrix request.
    public static let maxSymbols = 1000

    public init(store: CorrelationsStore, bus: MessageBus) {
        self.store = store
        self.bus = bus
    }

    public func add(to router: inout Router) {
        router.post("/windows") { request in
            try await CommandEndpoint.accept(AddWindowBody.parse(request.body), from: request, bus: bus)
        }
        router.get("/windows") { _ in try .json(WindowsBody(windows: try await store.windows())) }
        router.get("/correlations") { request in
            guard let list = request.query["symbols"], !list.isEmpty else {
                throw HTTPError.invalidQuery("symbols is required: symbols=A,B,C")
            }
            let symbols = list.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard symbols.count <= Self.maxSymbols else {
                throw HTTPError.invalidQuery("at most \(Self.maxSymbols) symbols")
            }
            let window = try await trackedWindow(request)
            try await requireKnown(symbols)
            // Each distinct symbol once in the store's matrix; the answer repeats rows as asked.
            var unique: [String] = []
            var position: [String: Int] = [:]
            for symbol in symbols where position[symbol] == nil {
                position[symbol] = unique.count
                unique.append(symbol)
            }
            let (values, asOf) = try await store.matrix(of: unique, window: window)
            let n = unique.count
            let rows = symbols.map { position[$0]! }
            return .json(generated: MatrixBody.document(symbols: symbols, window: window,
                                                        asOf: asOf.map { CalendarDate(daysSinceEpoch: Int($0)) },
                                                        rows: rows, values: values, size: n))
        }
        router.get("/correlations/{a}/{b}") { request in
            let a = request.parameters["a"] ?? "", b = request.parameters["b"] ?? ""
            let window = try await trackedWindow(request)
            try await requireKnown([a, b])
            let c = try await store.pair(a, b, window: window)
            return try .json(PairBody(a: a, b: b, window: window, value: c?.value, observations: c?.observations ?? 0,
                                      asOf: c?.asOfDay.map { CalendarDate(daysSinceEpoch: Int($0)) }))
        }
    }

    /// The `window` query parameter (default 60): 400 when not an integer, 422 out of
    /// range, 404 `unknown_window` when not tracked.
    func trackedWindow(_ request: HTTPRequest) async throws -> Int {
        let text = request.query["window"] ?? "60"
        guard let window = Int(text) else { throw HTTPError.invalidQuery("window must be an integer, got \(text)") }
        guard AddWindow.range.contains(window) else {
            throw HTTPError.unprocessable("invalid_window", "window must be between 2 and 2520")
        }
        guard try await store.isTracked(window) else {
            throw HTTPError(404, "unknown_window", "window \(window) is not tracked; POST /windows to track it")
        }
        return window
    }

    func requireKnown(_ symbols: [String]) async throws {
        for symbol in symbols where !Symbol.isValid(symbol) {
            throw HTTPError.unprocessable("invalid_symbol", "symbol must match ^[A-Z0-9.\\-]{1,15}$, got \(symbol)")
        }
        let known = try await store.knownSymbols()
        if let missing = symbols.first(where: { !known.contains($0) }) {
            throw HTTPError(404, "unknown_symbol", "no returns received for \(missing)")
        }
    }

    /// The `GET /correlations` document: `{"as_of","matrix","symbols","window"}`.
    enum MatrixBody {
        /// The document, keys sorted as `JSONEncoder` sorts them, written directly, a row of the
        /// matrix at a time as the daemon sends it: row `r` of the matrix is row `rows[r]` of
        /// `values` (`size × size`, row-major; NaN or infinite: `null`). A 500-symbol document
        /// is 5 MB: made whole (and copied into the daemon), it was most of correlations-api's
        /// memory; through `JSONEncoder` it was a tree of 250,000 boxed values first.
        static func document(symbols: [String], window: Int, asOf: CalendarDate?, rows: [Int], values: [Double],
                             size: Int) -> GeneratedBody {
            let rowsOut = Rows(symbols: symbols, window: window, asOf: asOf, rows: rows, values: values, size: size)
            return GeneratedBody { rowsOut.next() }
        }

        /// The whole document (tests).
        static func json(symbols: [String], window: Int, asOf: CalendarDate?, rows: [Int], values: [Double],
                         size: Int) -> [UInt8] {
            document(symbols: symbols, window: window, asOf: asOf, rows: rows, values: values, size: size).collect()
        }

        /// The pieces of the document: its head up to the matrix, each row, its tail.
        /// `@unchecked Sendable`: `next` is only called under the lock of the `GeneratedBody`
        /// that holds it, one call at a time.
        final class Rows: @unchecked Sendable {
            let symbols: [String], window: Int, asOf: CalendarDate?, rows: [Int], values: [Double], size: Int
            /// The next row to write; -1: the head.
            private var row = -1
            private var ended = false

            init(symbols: [String], window: Int, asOf: CalendarDate?, rows: [Int], values: [Double], size: Int) {
                (self.symbols, self.window, self.asOf, self.rows, self.values, self.size) = (symbols, window, asOf, rows, values, size)
            }

            func next() -> [UInt8]? {
                guard !ended else { return nil }
                defer { row += 1 }
                if row == -1 {
                    var head = EventJSONWriter(capacity: 64)
                    if let asOf { head.date(asOf) } else { head.null() }
                    return Array(#"{"as_of":"#.utf8) + head.bytes + Array(#","matrix":["#.utf8)
                }
                if row < rows.count {
                    let i = rows[row]
                    var w = EventJSONWriter(capacity: 1 + 24 * rows.count)
                    w.array(rows) { w, j in
                        let value = values[i * size + j]
                        if value.isFinite { w.double(value) } else { w.null() }
                    }
                    return row > 0 ? [UInt8(ascii: ",")] + w.bytes : w.bytes
                }
                ended = true
                var tail = EventJSONWriter(capacity: 64 + symbols.reduce(0) { $0 + $1.utf8.count + 3 })
                tail.array(symbols) { w, symbol in w.string(symbol) }
                var window = EventJSONWriter(capacity: 8)
                window.int(self.window)
                return Array(#"],"symbols":"#.utf8) + tail.bytes + Array(#","window":"#.utf8) + window.bytes + [UInt8(ascii: "}")]
            }
        }
    }

    struct PairBody: Encodable {
        let a: String
        let b: String
        let window: Int
        let value: Double?
        let observations: Int
        let asOf: CalendarDate?

        enum CodingKeys: String, CodingKey { case a, b, window, value, observations, asOf = "as_of" }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(a, forKey: .a)
            try c.encode(b, forKey: .b)
            try c.encode(window, forKey: .window)
            try c.encode(value, forKey: .value)
            try c.encode(observations, forKey: .observations)
            try c.encode(asOf, forKey: .asOf)
        }
    }
}

/// `GET /windows`: the tracked windows, ascending.
struct WindowsBody: Encodable {
    let windows: [Int]
}
