import EventCatalog
import Foundation
import HTTPServer
import Logging
import MessageBus
import ServiceRuntime

/// The REST API of the returns service (DESIGN.md "Read views").
public struct ReturnsRoutes: Sendable {
    let store: ReturnsStore
    let bus: MessageBus

    public init(store: ReturnsStore, bus: MessageBus) {
        self.store = store
        self.bus = bus
    }

    public func add(to router: inout Router) {
        router.post("/prices") { request in try await recordPrices(request) }
        router.get("/symbols") { _ in try .json(SymbolsBody(symbols: try await store.symbols())) }
        router.get("/prices/{symbol}") { request in
            let symbol = try Self.symbol(request)
            let (from, to) = try Self.range(request)
            guard let prices = try await store.prices(of: symbol, from: from, to: to) else {
                throw Self.unknown(symbol)
            }
            return try .json(PricesBody(symbol: symbol, prices: prices))
        }
        router.get("/returns/{symbol}/summary") { request in
            let symbol = try Self.symbol(request)
            // From the prices themselves, so the summary is consistent even while the worker catches up.
            guard let prices = try await store.prices(of: symbol, from: nil, to: nil), !prices.isEmpty else {
                throw Self.unknown(symbol)
            }
            let returns = ReturnsMath.dailyReturns(prices).map(\.simple)
            return try .json(ReturnsMath.summary(symbol: symbol, prices: prices, returns: returns))
        }
        router.get("/returns/{symbol}") { request in
            let symbol = try Self.symbol(request)
            let (from, to) = try Self.range(request)
            let kind = request.query["kind"] ?? "simple"
            guard kind == "simple" || kind == "log" else {
                throw HTTPError.invalidQuery("kind must be simple or log, got \(kind)")
            }
            guard let values = try await store.returns(of: symbol, from: from, to: to, log: kind == "log") else {
                throw Self.unknown(symbol)
            }
            return try .json(ReturnsBody(symbol: symbol, kind: kind, returns: values))
        }
    }

    /// `POST /prices`: validate, run the command, answer 202 with the operation id.
    func recordPrices(_ request: HTTPRequest) async throws -> HTTPResponse {
        try await CommandEndpoint.accept(RecordPricesBody.parse(request.body), from: request, bus: bus)
    }

    static func symbol(_ request: HTTPRequest) throws -> String {
        let symbol = request.parameters["symbol"] ?? ""
        guard Symbol.isValid(symbol) else {
            throw HTTPError.unprocessable("invalid_symbol", "symbol must match ^[A-Z0-9.\\-]{1,15}$, got \(symbol)")
        }
        return symbol
    }

    static func range(_ request: HTTPRequest) throws -> (CalendarDate?, CalendarDate?) {
        func date(_ name: String) throws -> CalendarDate? {
            guard let text = request.query[name], !text.isEmpty else { return nil }
            guard let date = CalendarDate(text) else {
                throw HTTPError.invalidQuery("\(name) must be a date in YYYY-MM-DD form, got \(text)")
            }
            return date
        }
        return (try date("from"), try date("to"))
    }

    static func unknown(_ symbol: String) -> HTTPError {
        HTTPError(404, "unknown_symbol", "no prices recorded for \(symbol)")
    }

    struct SymbolsBody: Encodable { let symbols: [String] }
    struct PricesBody: Encodable {
        let symbol: String
        let prices: [PricePoint]
    }
    struct ReturnsBody: Encodable {
        let symbol: String
        let kind: String
        let returns: [DatedValue]
    }
}
