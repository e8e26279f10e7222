import HTTPServer
import Returns
import Testing

@Suite("POST /prices validation")
struct RecordPricesParsingTests {
    func code(_ body: String) -> (Int, String)? {
        do {
            _ = try RecordPricesBody.parse(Array(body.utf8))
            return nil
        } catch {
            return (error.status, error.code)
        }
    }

    @Test("body faults are 400 invalid_body", arguments: [
        "not json", "[]", "{\"symbol\":\"AAPL\"}", "{\"prices\":[]}", "{\"symbol\":1,\"prices\":[]}",
        "{\"symbol\":\"AAPL\",\"prices\":{}}", "{\"symbol\":\"AAPL\",\"prices\":[1]}",
        "{\"symbol\":\"AAPL\",\"prices\":[{\"date\":\"2024-01-02\",\"close\":\"1\"}]}",
        "{\"symbol\":\"AAPL\",\"prices\":[{\"date\":20240102,\"close\":1}]}",
        "{\"symbol\":\"AAPL\",\"prices\":[{\"close\":1}]}",
        "{\"symbol\":\"AAPL\",\"prices\":[{\"date\":\"2024-01-02\",\"close\":true}]}",
        "{\"symbol\":\"AAPL\",\"prices\":[{\"date\":\"2024-01-02\",\"close\":1}]} trailing",
    ])
    func invalidBody(body: String) {
        #expect(code(body)! == (400, "invalid_body"))
    }

    @Test("value faults are 422 with their code", arguments: [
        ("{\"symbol\":\"aapl\",\"prices\":[{\"date\":\"2024-01-02\",\"close\":1}]}", "invalid_symbol"),
        ("{\"symbol\":\"ABCDEFGHIJKLMNOP\",\"prices\":[{\"date\":\"2024-01-02\",\"close\":1}]}", "invalid_symbol"),
        ("{\"symbol\":\"AAPL\",\"prices\":[]}", "empty_prices"),
        ("{\"symbol\":\"AAPL\",\"prices\":[{\"date\":\"2023-02-29\",\"close\":1}]}", "invalid_date"),
        ("{\"symbol\":\"AAPL\",\"prices\":[{\"date\":\"2024-01-02\",\"close\":0}]}", "invalid_price"),
        ("{\"symbol\":\"AAPL\",\"prices\":[{\"date\":\"2024-01-02\",\"close\":-3.5}]}", "invalid_price"),
        ("{\"symbol\":\"AAPL\",\"prices\":[{\"date\":\"2024-01-02\",\"close\":1e999}]}", "invalid_price"),
        ("{\"symbol\":\"AAPL\",\"prices\":[{\"date\":\"2024-01-02\",\"close\":1e-300}]}", "invalid_price"),
        ("{\"symbol\":\"AAPL\",\"prices\":[{\"date\":\"2024-01-02\",\"close\":1.0000001e150}]}", "invalid_price"),
        ("{\"symbol\":\"AAPL\",\"prices\":[{\"date\":\"2024-01-02\",\"close\":1},{\"date\":\"2024-01-02\",\"close\":2}]}",
         "duplicate_date"),
    ])
    func invalidValues(body: String, expected: String) {
        #expect(code(body)! == (422, expected))
    }

    @Test("a body fault wins over a value fault")
    func order() {
        // invalid symbol (422) and a string close (400): the 400 wins.
        #expect(code("{\"symbol\":\"bad\",\"prices\":[{\"date\":\"2024-01-02\",\"close\":\"x\"}]}")! == (400, "invalid_body"))
    }

    @Test("single and multi-symbol forms; prices sorted by date")
    func accepted() throws {
        let one = try RecordPricesBody.parse(Array("""
            {"symbol":"BRK.B","prices":[{"date":"2024-01-03","close":2},{"date":"2024-01-02","close":1.5}]}
            """.utf8))
        #expect(one.prices["BRK.B"]!.map(\.date.description) == ["2024-01-02", "2024-01-03"])
        let many = try RecordPricesBody.parse(Array("""
            {"prices":{"AAPL":[{"date":"2024-01-02","close":1}],"MSFT":[{"date":"2024-01-02","close":2}]}}
            """.utf8))
        #expect(Set(many.prices.keys) == ["AAPL", "MSFT"])
    }
}
