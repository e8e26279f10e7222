// libFuzzer target: the request-body JSON parser (JSONValue), compiled with its sources by
// scripts/fuzz.sh. Whatever the bytes, parsing ends in a value or a SyntaxError; a value
// can always be written back as JSON and measured.
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    guard let value = try? JSONValue.parse(bytes) else { return 0 }
    _ = value.footprint
    // Every parsed value encodes (a non-finite number is written as null).
    let encoded = try! JSONEncoder().encode(value)
    // And what it wrote parses again.
    _ = try! JSONValue.parse(Array(encoded))
    _ = try? JSONValue.parseObject(bytes)
    return 0
}
