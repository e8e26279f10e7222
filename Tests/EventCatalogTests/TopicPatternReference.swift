// Also compiled into the topic fuzz target (scripts/fuzz.sh): plain Swift, no imports.

/// The plain recursive match that `TopicPattern` replaces: exponential in the number of `#`,
/// but obviously right, so it is the reference on small inputs.
func referenceMatch(_ pattern: [Substring], _ key: [Substring]) -> Bool {
    func match(_ i: Int, _ j: Int) -> Bool {
        if i == pattern.count { return j == key.count }
        if pattern[i] == "#" { return (j...key.count).contains { match(i + 1, $0) } }
        guard j < key.count else { return false }
        return (pattern[i] == "*" || pattern[i] == key[j]) && match(i + 1, j + 1)
    }
    return match(0, 0)
}
