import Synchronization

/// A response body made piece by piece as the daemon sends it, so that a large document is
/// never whole in memory: `next` gives the next piece, `nil` at the end. The daemon calls it
/// on its own thread, one call at a time, as the socket takes what came before (in chunked
/// transfer encoding: the length is not known up front). What `next` reads as it goes lives
/// in an object of its own (a closure given here cannot hold mutable state), as
/// `CorrelationsRoutes.MatrixBody.Rows` does for a matrix.
public final class GeneratedBody: Sendable, Equatable {
    private struct State {
        var next: @Sendable () -> [UInt8]?
        var pending: [UInt8] = []
        var offset = 0
        var ended = false
    }

    private let state: Mutex<State>

    public init(_ next: @escaping @Sendable () -> [UInt8]?) { state = Mutex(State(next: next)) }

    /// Fills `buffer` with what comes next; 0 once the body has ended.
    func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        state.withLock { s in
            var written = 0
            while written < buffer.count {
                if s.offset == s.pending.count {
                    guard !s.ended, let piece = s.next() else {
                        s.ended = true
                        break
                    }
                    s.pending = piece
                    s.offset = 0
                    continue
                }
                let n = min(buffer.count - written, s.pending.count - s.offset)
                s.pending.withUnsafeBytes { piece in
                    (buffer.baseAddress! + written).copyMemory(from: piece.baseAddress! + s.offset, byteCount: n)
                }
                s.offset += n
                written += n
            }
            return written
        }
    }

    /// What is left of the body, whole (tests; a small body).
    public func collect() -> [UInt8] {
        var all: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(into: $0) }
            if n == 0 { return all }
            all += chunk[..<n]
        }
    }

    public static func == (a: GeneratedBody, b: GeneratedBody) -> Bool { a === b }
}
