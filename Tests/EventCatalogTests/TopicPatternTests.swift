import EventCatalog
import Testing

@Suite("Topic patterns")
struct TopicPatternTests {
    @Test("agrees with the reference on 20,000 random patterns and keys")
    func agreesWithReference() {
        var rng = SystemRandomNumberGenerator()
        let words: [Substring] = ["a", "b", "*", "#"], keyWords: [Substring] = ["a", "b", "c"]
        var matched = 0
        var disagreements: [String] = []
        for _ in 0..<20_000 {
            let pattern = (0..<Int.random(in: 1...7, using: &rng)).map { _ in words.randomElement(using: &rng)! }
            let key = (0..<Int.random(in: 1...6, using: &rng)).map { _ in keyWords.randomElement(using: &rng)! }
            let compiled = TopicPattern(pattern.joined(separator: "."))!
            let expected = referenceMatch(pattern, key)
            if compiled.matches(key.joined(separator: ".")) != expected { disagreements.append("\(pattern) vs \(key)") }
            if expected { matched += 1 }
        }
        #expect(disagreements.isEmpty, "\(disagreements.prefix(5))")
        #expect(matched > 1_000, "the sample should hold matches too")
    }

    @Test("refuses an empty pattern, an empty word and more than 255 bytes")
    func refuses() {
        #expect(throws: TopicPattern.Problem.empty) { try TopicPattern(validating: "") }
        #expect(throws: TopicPattern.Problem.emptyWord) { try TopicPattern(validating: "a..b") }
        #expect(throws: TopicPattern.Problem.emptyWord) { try TopicPattern(validating: "a.") }
        let attack = Array(repeating: "#", count: 3_000).joined(separator: ".") + ".x"
        #expect(throws: TopicPattern.Problem.tooLong(bytes: 6_001)) { try TopicPattern(validating: attack) }
        #expect(TopicPattern(String(repeating: "a", count: 255)) != nil)
        #expect(TopicPattern(String(repeating: "a", count: 256)) == nil)
    }

    /// The longest patterns of `#` there can be, against keys of as many words: the recursive
    /// match takes about 2^127 steps on these; the automaton at most 128 × 128 per key.
    @Test("the worst 255-byte patterns finish", .timeLimit(.minutes(1)))
    func worstCase() {
        let hashes = Array(repeating: "#", count: 127).joined(separator: ".") + ".x"   // 255 bytes
        let pattern = TopicPattern(hashes)!
        let alternating = TopicPattern(Array(repeating: "#.a", count: 63).joined(separator: ".") + ".#.x")!
        var hits = 0
        for n in 1...128 {
            let miss = Array(repeating: "a", count: n).joined(separator: ".")
            let hit = miss + ".x"
            if pattern.matches(miss) || alternating.matches(miss) { hits += 100 }
            if pattern.matches(hit) { hits += 1 }
            if alternating.matches(hit) != (n >= 63) { hits += 1_000 }
        }
        #expect(hits == 128)
    }
}
