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
            return .json(bytes: MatrixBody.json(symbols: symbols, window: window,
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
        /// The document, keys sorted as `JSONEncoder` sorts them, written directly: row `r` of the
        /// matrix is row `rows[r]` of `values` (`size × size`, row-major; NaN or infinite:
        /// `null`). A 500-symbol matrix through `JSONEncoder` built a tree of 250,000 boxed
        /// values first.
        static func json(symbols: [String], window: Int, asOf: CalendarDate?, rows: [Int], values: [Double],
                         size: Int) -> [UInt8] {
            // Each cell on or below the diagonal is formatted once: its mirror (a correlation
            // matrix is symmetric), and its repeats when a symbol is asked twice, copy the text
            // written first (turning doubles into text is most of the document's cost): where
            // that text starts in the document, per cell (-1: not written yet), and its length.
            var start = [Int32](repeating: -1, count: size * (size + 1) / 2)
            var length = [UInt8](repeating: 0, count: size * (size + 1) / 2)
            // About 20 bytes a cell: reserved, not touched (no copy as the document grows).
            var writer = EventJSONWriter(capacity: 256 + 26 * rows.count * rows.count
                                         + symbols.reduce(0) { $0 + $1.utf8.count + 3 })
            func cell(_ w: inout EventJSONWriter, _ value: Double) {
                if value.isFinite { w.double(value) } else { w.null() }
            }
            writer.object { w in
                w.key("as_of")
                if let asOf { w.date(asOf) } else { w.null() }
                w.key("matrix")
                w.array(rows) { w, i in
                    w.array(rows) { w, j in
                        let value = values[i * size + j]
                        // A cell that is not its mirror's value (never, for the store's matrices)
                        // is written for itself.
                        guard value.bitPattern == values[j * size + i].bitPattern else { return cell(&w, value) }
                        let k = i >= j ? i * (i + 1) / 2 + j : j * (j + 1) / 2 + i
                        if start[k] >= 0 { return w.again(Int(start[k])..<Int(start[k]) + Int(length[k])) }
                        let before = w.bytes.count
                        cell(&w, value)
                        let from = w.bytes[before] == UInt8(ascii: ",") ? before + 1 : before
                        start[k] = Int32(from)
                        length[k] = UInt8(w.bytes.count - from)
                    }
                }
                w.key("symbols")
                w.array(symbols) { w, symbol in w.string(symbol) }
                w.key("window")
                w.int(window)
            }
            return writer.bytes
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
