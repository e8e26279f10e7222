import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import HTTPServer

/// The console (DESIGN.md, "The console"): `GET /` and its static files from `Console/`
/// (bundled as they are in the repo: no build step), and the apis' reads under `/api/…`,
/// so that the page talks to the boundary alone — in a container network the browser could
/// not reach the apis by the names the boundary uses.
///
/// The proxy passes only the apis' `GET` routes listed in ``proxied``, with their query, and
/// answers what the api answered (status and JSON body); an api that cannot be reached is
/// `502 upstream_unreachable`, one that is slower than ``timeout`` `504 upstream_timeout`.
public struct ConsoleRoutes: Sendable {
    /// Where the apis are (`STEGA_RETURNS_URL`, `STEGA_CORRELATIONS_URL`, as the CLI reads them).
    public let returns: URL
    public let correlations: URL
    /// The most an api may take to answer a read.
    public let timeout: Double
    let files: [String: (bytes: [UInt8], type: String)]
    let session: URLSession

    /// The apis' reads the console uses: the boundary's path → the api and its path.
    static let proxied: [(route: String, api: Api, path: String)] = [
        ("/api/returns/symbols", .returns, "/symbols"),
        ("/api/returns/prices/{symbol}", .returns, "/prices/{symbol}"),
        ("/api/returns/returns/{symbol}", .returns, "/returns/{symbol}"),
        ("/api/returns/returns/{symbol}/summary", .returns, "/returns/{symbol}/summary"),
        ("/api/correlations/windows", .correlations, "/windows"),
        ("/api/correlations/correlations", .correlations, "/correlations"),
        ("/api/correlations/correlations/{a}/{b}", .correlations, "/correlations/{a}/{b}"),
    ]

    enum Api: Sendable { case returns, correlations }

    public init(returns: URL, correlations: URL, timeout: Double = 10) {
        self.returns = returns
        self.correlations = correlations
        self.timeout = timeout
        files = Self.loadFiles()
        let configuration = URLSessionConfiguration.ephemeral
        configuration.timeoutIntervalForRequest = timeout
        configuration.timeoutIntervalForResource = timeout
        configuration.requestCachePolicy = .reloadIgnoringLocalCacheData
        session = URLSession(configuration: configuration)
    }

    /// The apis' URLs from the environment, with the CLI's defaults.
    public init(environment: [String: String]) throws {
        func url(_ name: String, _ fallback: String) throws -> URL {
            let text = environment[name].flatMap { $0.isEmpty ? nil : $0 } ?? fallback
            guard let url = URL(string: text), let scheme = url.scheme, ["http", "https"].contains(scheme), url.host != nil else {
                throw HTTPServerError("\(name) must be an http:// or https:// URL, got \(text)")
            }
            return url
        }
        self.init(returns: try url("STEGA_RETURNS_URL", "http://127.0.0.1:8081"),
                  correlations: try url("STEGA_CORRELATIONS_URL", "http://127.0.0.1:8082"))
    }

    public func add(to router: inout Router) {
        router.get("/") { _ in page("index.html") }
        router.get("/console/{file}") { request in
            let name = request.parameters["file"] ?? ""
            guard files[name] != nil, name != "index.html" else { throw HTTPError.notFound("no console file \(name)") }
            return page(name)
        }
        for entry in Self.proxied {
            router.get(entry.route) { request in try await proxy(request, to: entry.api, path: entry.path) }
        }
    }

    private func page(_ name: String) -> HTTPResponse {
        guard let file = files[name] else { return .error(.notFound("no console file \(name)")) }
        var headers = ["Content-Type": file.type, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"]
        if name == "index.html" {
            // Only its own script, styles and connections: nothing injected runs.
            headers["Content-Security-Policy"] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                + "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            headers["Referrer-Policy"] = "no-referrer"
        }
        return HTTPResponse(status: 200, headers: headers, body: file.bytes)
    }

    func proxy(_ request: HTTPRequest, to api: Api, path pattern: String) async throws -> HTTPResponse {
        let base = api == .returns ? returns : correlations
        var path = pattern
        for (name, value) in request.parameters {
            // A parameter is one path segment; dot segments would walk the api's paths.
            guard value != ".", value != "..",
                  let encoded = value.addingPercentEncoding(withAllowedCharacters: Self.segmentAllowed) else {
                throw HTTPError.notFound("no route for \(request.path)")
            }
            path = path.replacingOccurrences(of: "{\(name)}", with: encoded)
        }
        var components = URLComponents(url: base, resolvingAgainstBaseURL: false)!
        components.percentEncodedPath = (components.percentEncodedPath.hasSuffix("/")
            ? String(components.percentEncodedPath.dropLast()) : components.percentEncodedPath) + path
        let query = request.query.sorted { $0.key < $1.key }.map { URLQueryItem(name: $0.key, value: $0.value) }
        components.queryItems = query.isEmpty ? nil : query
        guard let url = components.url else { throw HTTPError.notFound("no route for \(request.path)") }
        var upstream = URLRequest(url: url)
        upstream.setValue("application/json", forHTTPHeaderField: "Accept")
        let name = api == .returns ? "returns-api" : "correlations-api"
        do {
            let (data, response) = try await session.data(for: upstream)
            let status = (response as? HTTPURLResponse)?.statusCode ?? 502
            return .json(bytes: Array(data), status: status)
        } catch let error as URLError where error.code == .timedOut {
            throw HTTPError(504, "upstream_timeout", "\(name) at \(base.absoluteString) did not answer within \(Int(timeout)) s")
        } catch {
            throw HTTPError(502, "upstream_unreachable", "\(name) at \(base.absoluteString) cannot be reached")
        }
    }

    /// Unreserved characters (RFC 3986) and the sub-delimiters an api's path may hold.
    static let segmentAllowed = CharacterSet(charactersIn:
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@")

    /// The files of `Console/`, read once.
    static func loadFiles() -> [String: (bytes: [UInt8], type: String)] {
        guard let directory = Bundle.module.url(forResource: "Console", withExtension: nil),
              let names = try? FileManager.default.contentsOfDirectory(atPath: directory.path) else { return [:] }
        var files: [String: (bytes: [UInt8], type: String)] = [:]
        for name in names {
            guard let data = FileManager.default.contents(atPath: directory.appendingPathComponent(name).path) else { continue }
            let type: String
            switch (name as NSString).pathExtension {
            case "html": type = "text/html; charset=utf-8"
            case "js": type = "text/javascript; charset=utf-8"
            case "css": type = "text/css; charset=utf-8"
            case "svg": type = "image/svg+xml"
            case "png": type = "image/png"
            default: type = "application/octet-stream"
            }
            files[name] = (Array(data), type)
        }
        return files
    }
}
