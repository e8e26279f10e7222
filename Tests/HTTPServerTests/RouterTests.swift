import Foundation
import HTTPServer
import Synchronization
import Testing

struct Oops: Error {}

func makeRouter() -> Router {
    var router = Router()
    router.get("/items/{id}") { request in try .json(["id": request.parameters["id"] ?? ""]) }
    router.post("/items") { request in
        _ = try JSONValue.parse(request.body)
        return try .json(["ok": "yes"], status: 202)
    }
    router.get("/boom") { _ in throw Oops() }
    router.get("/teapot") { _ in throw HTTPError(418, "teapot", "short and stout") }
    router.get("/bytes/{n}") { request in .json(bytes: patternBytes(Int(request.parameters["n"] ?? "") ?? 0)) }
    // The same bytes made as they are sent, in pieces of 1,000 (and an empty one after two).
    router.get("/pieces/{n}") { request in
        let all = patternBytes(Int(request.parameters["n"] ?? "") ?? 0)
        var pieces = stride(from: 0, to: all.count, by: 1_000).map { Array(all[$0..<min(all.count, $0 + 1_000)]) }
        if pieces.count > 2 { pieces.insert([], at: 2) }
        let next = Mutex(0)
        let made = pieces
        return .json(generated: GeneratedBody {
            next.withLock { k -> [UInt8]? in
                guard k < made.count else { return nil }
                k += 1
                return made[k - 1]
            }
        })
    }
    return router
}

/// `n` bytes that differ from one offset to the next (a misplaced chunk shows).
func patternBytes(_ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) } }

func errorCode(_ response: HTTPResponse) -> String? {
    guard let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
          let error = object["error"] as? [String: Any] else { return nil }
    #expect(error["message"] is String)
    return error["code"] as? String
}

@Suite("Router")
struct RouterTests {
    let router = makeRouter()

    @Test("path parameters are bound and percent-decoded")
    func parameters() async throws {
        let response = await router.respond(to: HTTPRequest(method: "GET", path: "/items/BRK%2EB"))
        #expect(response.status == 200)
        #expect(String(decoding: response.body, as: UTF8.self) == #"{"id":"BRK.B"}"#)
        #expect(response.headers["Content-Type"] == "application/json")
    }

    @Test("unknown route 404, wrong method 405 with Allow")
    func routeAndMethod() async {
        let missing = await router.respond(to: HTTPRequest(method: "GET", path: "/nothing"))
        #expect(missing.status == 404)
        #expect(errorCode(missing) == "not_found")
        let wrong = await router.respond(to: HTTPRequest(method: "DELETE", path: "/items"))
        #expect(wrong.status == 405)
        #expect(errorCode(wrong) == "method_not_allowed")
        #expect(wrong.headers["Allow"] == "POST")
    }

    @Test("faults in DESIGN.md's order: route, method, content type, size, body")
    func faultOrder() async {
        let json = ["content-type": "application/json; charset=utf-8"]
        let text = ["content-type": "text/plain"]
        // Wrong content type and too large: 415 wins.
        let r1 = await router.respond(to: HTTPRequest(method: "POST", path: "/items", headers: text, bodyTooLarge: true))
        #expect(r1.status == 415)
        #expect(errorCode(r1) == "unsupported_media_type")
        // Missing content type: 415.
        #expect(await router.respond(to: HTTPRequest(method: "POST", path: "/items", body: [])).status == 415)
        // Right type, too large: 413.
        let r2 = await router.respond(to: HTTPRequest(method: "POST", path: "/items", headers: json, bodyTooLarge: true))
        #expect(r2.status == 413)
        #expect(errorCode(r2) == "payload_too_large")
        // Wrong method and wrong type: 405 wins.
        #expect(await router.respond(to: HTTPRequest(method: "PUT", path: "/items", headers: text)).status == 405)
        // Accepted.
        let ok = await router.respond(to: HTTPRequest(method: "POST", path: "/items", headers: json, body: Array("{}".utf8)))
        #expect(ok.status == 202)
    }

    @Test("with a write token, writes need Authorization: Bearer <token>; reads do not")
    func writeToken() async {
        var router = makeRouter()
        router.writeToken = "s3cret"
        let json = ["content-type": "application/json"]
        let missing = await router.respond(to: HTTPRequest(method: "POST", path: "/items", headers: json, body: Array("{}".utf8)))
        #expect(missing.status == 401)
        #expect(errorCode(missing) == "unauthorized")
        #expect(missing.headers["WWW-Authenticate"] == "Bearer")
        var wrong = json
        wrong["authorization"] = "Bearer s3creT"
        #expect(await router.respond(to: HTTPRequest(method: "POST", path: "/items", headers: wrong, body: [])).status == 401)
        var right = json
        right["authorization"] = "Bearer s3cret"
        #expect(await router.respond(to: HTTPRequest(method: "POST", path: "/items", headers: right, body: Array("{}".utf8))).status == 202)
        #expect(await router.respond(to: HTTPRequest(method: "GET", path: "/items/1")).status == 200)
        // The scheme in any case (RFC 6750); a token that is a prefix, or longer, is refused.
        for (header, status) in [("bearer s3cret", 202), ("BEARER s3cret", 202), ("Bearer s3cre", 401), ("Bearer s3crett", 401),
                                 ("Bearer ", 401), ("Basic s3cret", 401), ("s3cret", 401)] {
            var headers = json
            headers["authorization"] = header
            #expect(await router.respond(to: HTTPRequest(method: "POST", path: "/items", headers: headers,
                                                         body: Array("{}".utf8))).status == status, "\(header)")
        }
        // Route and method faults still come first.
        #expect(await router.respond(to: HTTPRequest(method: "DELETE", path: "/items")).status == 405)
    }

    @Test("an HTTPError sets the status; any other error is a 500 with no error text")
    func errors() async {
        let teapot = await router.respond(to: HTTPRequest(method: "GET", path: "/teapot"))
        #expect(teapot.status == 418)
        #expect(errorCode(teapot) == "teapot")
        let boom = await router.respond(to: HTTPRequest(method: "GET", path: "/boom"))
        #expect(boom.status == 500)
        #expect(errorCode(boom) == "internal_error")
        #expect(!String(decoding: boom.body, as: UTF8.self).contains("Oops"))
    }
}

@Suite("JSON value parser")
struct JSONValueTests {
    @Test("parses documents", arguments: [
        ("{\"a\":[1,2.5,-3e2,true,false,null,\"x\\n\\u00e9\\ud83d\\ude00\"]}", true),
        ("  [ ]  ", true), ("\"\"", true), ("0", true), ("-0.5e-3", true),
        ("{", false), ("[1,]", false), ("{\"a\" 1}", false), ("01", false), ("1.", false), (".5", false),
        ("\"\\ud800\"", false), ("\"a\u{01}\"", false), ("tru", false), ("[1] [2]", false), ("", false),
        ("\"\\x\"", false),
    ])
    func parse(text: String, valid: Bool) {
        #expect(((try? JSONValue.parse(Array(text.utf8))) != nil) == valid)
    }

    @Test("values and overflow")
    func values() throws {
        let value = try JSONValue.parse(Array("{\"big\":1e999,\"w\":60,\"f\":60.5,\"e\":6e1,\"s\":\"\\u00e9\"}".utf8))
        #expect(value["big"] == .number(.infinity, integral: false))
        #expect(value["w"] == .number(60, integral: true))
        #expect(value["f"] == .number(60.5, integral: false))
        #expect(value["e"] == .number(60, integral: true))
        #expect(value["s"] == .string("é"))
    }

    @Test("invalid UTF-8 and deep nesting are refused")
    func refusals() {
        #expect(throws: JSONValue.SyntaxError.self) { try JSONValue.parse([0x22, 0xC3, 0x28, 0x22]) }
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(throws: JSONValue.SyntaxError.self) { try JSONValue.parse(Array(deep.utf8)) }
    }
}
