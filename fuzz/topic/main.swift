// libFuzzer target: topic-pattern matching. The input is a pattern, a newline, and a
// routing key. The compiled pattern must agree with the plain recursive match wherever that
// one is cheap to run (few words), and must never take long whatever the sizes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    let cut = bytes.firstIndex(of: 10) ?? bytes.count
    let patternText = String(decoding: bytes[..<cut], as: UTF8.self)
    let key = cut < bytes.count ? String(decoding: bytes[(cut + 1)...], as: UTF8.self) : ""
    guard let pattern = TopicPattern(patternText) else {
        precondition(patternText.isEmpty || patternText.utf8.count > TopicPattern.maxBytes
                     || patternText.split(separator: ".", omittingEmptySubsequences: false).contains(""))
        return 0
    }
    let matched = pattern.matches(key)
    let p = patternText.split(separator: ".", omittingEmptySubsequences: false)
    let k = key.split(separator: ".", omittingEmptySubsequences: false)
    if p.count <= 10, k.count <= 10 {
        precondition(matched == referenceMatch(p, k), "\(patternText) vs \(key)")
    }
    return 0
}
