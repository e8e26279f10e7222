/// A topic-exchange binding pattern, checked and compiled once: dot-separated words, where
/// `*` stands for exactly one word and `#` for zero or more (RabbitMQ's topic syntax).
///
/// Matching simulates the pattern as a word automaton (one state per pattern word), so it
/// costs at most (pattern words + 1) × key words steps and never backtracks: the naive
/// recursive match is exponential in the number of `#` (`#.#.#.….x` stalled the boundary).
/// Runs of `#` are folded into one (`#.#` means what `#` means), and a key with fewer words
/// than the pattern's `*` and literal words is rejected before any step.
///
/// ```swift
/// let pattern = TopicPattern("returns.events.*")!
/// pattern.matches("returns.events.prices_recorded")  // true
/// ```
public struct TopicPattern: Sendable, Hashable, CustomStringConvertible {
    /// AMQP's limit on a routing key (a short string), and so on a pattern.
    public static let maxBytes = 255

    enum Word: Sendable, Hashable {
        case literal(Substring)
        case one   // *
        case many  // #
    }

    /// The pattern as given.
    public let text: String
    let words: [Word]
    /// Words a key needs at least: every `*` and literal takes one.
    let minimumWords: Int
    /// Whether the pattern has a `#` (otherwise a key needs exactly ``minimumWords`` words).
    let hasMany: Bool

    /// Why a pattern is refused.
    public enum Problem: Error, Sendable, Equatable, CustomStringConvertible {
        case empty
        case tooLong(bytes: Int)
        case emptyWord

        public var description: String {
            switch self {
            case .empty: return "pattern is empty"
            case .tooLong(let bytes): return "pattern is \(bytes) bytes; at most \(TopicPattern.maxBytes)"
            case .emptyWord: return "pattern must be dot-separated words, * or #"
            }
        }
    }

    /// Compiles `text`; throws for an empty pattern, one over ``maxBytes`` bytes, or an empty word.
    public init(validating text: String) throws(Problem) {
        let bytes = text.utf8.count
        guard bytes > 0 else { throw .empty }
        guard bytes <= Self.maxBytes else { throw .tooLong(bytes: bytes) }
        var words: [Word] = []
        for part in text.split(separator: ".", omittingEmptySubsequences: false) {
            switch part {
            case "": throw .emptyWord
            case "#": if words.last != .many { words.append(.many) }
            case "*": words.append(.one)
            default: words.append(.literal(part))
            }
        }
        self.text = text
        self.words = words
        minimumWords = words.count { $0 != .many }
        hasMany = words.contains(.many)
    }

    /// `nil` where ``init(validating:)`` throws.
    public init?(_ text: String) {
        guard let pattern = try? TopicPattern(validating: text) else { return nil }
        self = pattern
    }

    public var description: String { text }

    /// Whether `key` matches.
    public func matches(_ key: String) -> Bool {
        matches(words: key.split(separator: ".", omittingEmptySubsequences: false))
    }

    /// Whether the key split into `keyWords` matches (split once when matching many patterns).
    public func matches(words keyWords: [Substring]) -> Bool {
        guard keyWords.count >= minimumWords, hasMany || keyWords.count == minimumWords else { return false }
        let states = words.count + 1  // state i: the first i pattern words are matched; the last accepts
        return withUnsafeTemporaryAllocation(of: Bool.self, capacity: 2 * states) { buffer in
            buffer.initialize(repeating: false)
            var current = UnsafeMutableBufferPointer(rebasing: buffer[0..<states])
            var next = UnsafeMutableBufferPointer(rebasing: buffer[states..<(2 * states)])
            current[0] = true
            close(current)
            for keyWord in keyWords {
                var any = false
                for i in 0..<words.count where current[i] {
                    switch words[i] {
                    case .many: next[i] = true  // # takes this word and may take more
                    case .one: next[i + 1] = true
                    case .literal(let literal): if literal == keyWord { next[i + 1] = true }
                    }
                    any = true
                }
                guard any else { return false }
                close(next)
                swap(&current, &next)
                for i in 0..<states { next[i] = false }
            }
            return current[words.count]
        }
    }

    /// Adds the states reachable without a key word: past a `#`, which may take none.
    private func close(_ set: UnsafeMutableBufferPointer<Bool>) {
        for i in 0..<words.count where set[i] && words[i] == .many { set[i + 1] = true }
    }
}
