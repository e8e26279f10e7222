// libFuzzer target: the WebSocket frame parser (RFC 6455), fed the input in pieces the way
// reads arrive. The first byte picks the side (client frames masked or not) and where the
// input is cut; whatever follows, the parser returns messages, asks for more, or names a
// protocol violation, and every message it returns is within its limits.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let all = Array(UnsafeRawBufferPointer(start: start, count: count))
    guard let control = all.first else { return 0 }
    let data = all.dropFirst()
    var parser = WebSocketParser(expectMasked: control & 1 == 0, maxFrameSize: 1 << 12, maxMessageSize: 1 << 13)
    let step = max(1, Int(control >> 1))
    var offset = data.startIndex
    while offset < data.endIndex {
        let end = min(data.endIndex, offset + step)
        parser.feed(data[offset..<end])
        offset = end
        do {
            while let message = try parser.next() {
                switch message {
                case .text(let text): precondition(text.utf8.count <= 1 << 13)
                case .binary(let bytes): precondition(bytes.count <= 1 << 13)
                case .ping(let bytes), .pong(let bytes): precondition(bytes.count <= 125)
                case .close(let code, _): precondition(code == WebSocketCloseCode.noStatus || WebSocketCloseCode.isValid(code))
                }
            }
        } catch {
            precondition(error.code >= 1000 && error.code < 5000)
            return 0
        }
    }
    return 0
}
