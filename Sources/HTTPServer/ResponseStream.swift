import Synchronization

/// A response body written over time (Server-Sent Events): the handler returns a response
/// carrying the stream, then writes to it from anywhere and finishes it.
///
/// ```swift
/// let stream = ResponseStream()
/// stream.write("event: ping\ndata: {}\n\n")
/// stream.finish()
/// return HTTPResponse(status: 200, headers: ["Content-Type": "text/event-stream"], stream: stream)
/// ```
public final class ResponseStream: Sendable, Equatable {
    struct State {
        var buffer: [UInt8] = []
        var finished = false
        /// The daemon suspended the connection waiting for data; a write resumes it.
        var waiting = false
        var resume: (@Sendable () -> Void)?
        /// Called once when the stream is done (finished and drained, or the client left).
        var onClose: [@Sendable () -> Void] = []
        var closed = false
    }

    let state = Mutex(State())
    /// Bytes buffered at most; a writer past it is cut off (the stream finishes).
    public let limit: Int

    public init(limit: Int = 1 << 20) { self.limit = limit }

    /// Appends `bytes`; returns false when the stream is finished or over its limit.
    @discardableResult
    public func write(_ bytes: [UInt8]) -> Bool {
        let (accepted, resume) = state.withLock { s -> (Bool, (@Sendable () -> Void)?) in
            guard !s.finished else { return (false, nil) }
            if s.buffer.count + bytes.count > limit {
                s.finished = true
            } else {
                s.buffer.append(contentsOf: bytes)
            }
            return (!s.finished, wake(&s))
        }
        resume?()
        return accepted
    }

    /// Appends the UTF-8 of `text`.
    @discardableResult
    public func write(_ text: String) -> Bool { write(Array(text.utf8)) }

    /// Ends the stream once what is buffered is sent.
    public func finish() {
        let resume = state.withLock { s -> (@Sendable () -> Void)? in
            s.finished = true
            return wake(&s)
        }
        resume?()
    }

    /// Whether `finish` was called (or the limit hit).
    public var isFinished: Bool { state.withLock { $0.finished } }

    /// Runs `handler` when the response is done or the client went away.
    public func onClose(_ handler: @escaping @Sendable () -> Void) {
        let now = state.withLock { s -> Bool in
            if s.closed { return true }
            s.onClose.append(handler)
            return false
        }
        if now { handler() }
    }

    private func wake(_ s: inout State) -> (@Sendable () -> Void)? {
        guard s.waiting else { return nil }
        s.waiting = false
        return s.resume
    }

    /// Called by the daemon when MHD is done with the response.
    func closed() {
        let handlers = state.withLock { s -> [@Sendable () -> Void] in
            guard !s.closed else { return [] }
            s.closed = true
            s.finished = true
            defer { s.onClose.removeAll() }
            return s.onClose
        }
        handlers.forEach { $0() }
    }

    public static func == (lhs: ResponseStream, rhs: ResponseStream) -> Bool { lhs === rhs }
}
