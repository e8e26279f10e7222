import EventCatalog

/// What happens to an event whose handling failed: how many handler attempts it gets, the
/// delay before each retry, when it is dead-lettered, and the `operation_failed` event that
/// tells the client its operation ended there. Consumers ask it for every failure, and
/// transports follow it (AMQP declares a delay queue per delay, the in-memory transport
/// redelivers at once); it is built once per worker, from `STEGA_RETRY_*`.
///
/// ```swift
/// let policy = RetryPolicy(maxAttempts: 5, baseDelayMs: 1000, failureEvent: ReturnsOperationFailed.self)
/// policy.outcome(failing: "timeout", permanently: false, attempt: 1)  // .retry(reason: "timeout")
/// policy.delayMs(after: 1)                                            // 1000
/// ```
public struct RetryPolicy: Sendable {
    /// Handler attempts before a message is dead-lettered (1: no retries).
    public let maxAttempts: Int
    /// Delay before the second attempt; doubled for each later one.
    public let baseDelayMs: Int
    /// Longest delay between attempts.
    public let maxDelayMs: Int
    /// The service's `operation_failed` event; `nil`: a dead letter tells nobody.
    public let failureEvent: (any OperationFailedEvent.Type)?

    public init(maxAttempts: Int = 5, baseDelayMs: Int = 1000, maxDelayMs: Int = 60_000,
                failureEvent: (any OperationFailedEvent.Type)? = nil) {
        self.maxAttempts = max(1, maxAttempts)
        self.baseDelayMs = max(1, baseDelayMs)
        self.maxDelayMs = max(self.baseDelayMs, maxDelayMs)
        self.failureEvent = failureEvent
    }

    /// One attempt: a failure is dead-lettered at once (the seed's transient mode, where a
    /// failed event is dropped).
    public static func noRetries(failureEvent: (any OperationFailedEvent.Type)? = nil) -> RetryPolicy {
        RetryPolicy(maxAttempts: 1, failureEvent: failureEvent)
    }

    /// The delay before attempt `attempt + 1`, in milliseconds: the base, doubled per attempt
    /// after the first, at most ``maxDelayMs``.
    public func delayMs(after attempt: Int) -> Int {
        let exponent = min(max(0, attempt - 1), 20)
        return min(maxDelayMs, baseDelayMs << exponent)
    }

    /// The attempts after which a retry may follow: `1..<maxAttempts`.
    public var retryingAttempts: Range<Int> { 1..<maxAttempts }

    /// What to do with a delivery whose handling failed on `attempt`: retry it while attempts
    /// remain, unless the failure is `permanent` (it cannot be decoded, or nothing handles it);
    /// otherwise dead-letter it.
    public func outcome(failing reason: String, permanently permanent: Bool, attempt: Int) -> DeliveryOutcome {
        permanent || attempt >= maxAttempts ? .deadLetter(reason: reason) : .retry(reason: reason)
    }

    /// What a transport does with `outcome` on `attempt`: a retry past the last attempt is a
    /// dead letter (whatever the handler asked for).
    public func settlement(of outcome: DeliveryOutcome, attempt: Int) -> DeliveryOutcome {
        if case .retry(let reason) = outcome, attempt >= maxAttempts { return .deadLetter(reason: reason) }
        return outcome
    }

    /// The `operation_failed` event for `envelope`'s operation, dead-lettered by `service`
    /// because of `reason` (cut to 500 characters); `nil` without an operation or a failure event.
    public func operationFailed(for envelope: EventEnvelope, service: String, reason: String) -> (any OperationFailedEvent)? {
        guard let failureEvent, let operation = envelope.correlationId else { return nil }
        return failureEvent.init(OperationFailure(operationId: operation, service: service,
                                                  reason: String(reason.prefix(500))))
    }
}
