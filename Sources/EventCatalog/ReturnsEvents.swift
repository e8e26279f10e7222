/// Closing prices of one symbol were recorded (inserted or updated).
public struct PricesRecorded: Event {
    public static let routingKey = "returns.events.prices_recorded"

    public var symbol: String
    public var firstDate: CalendarDate
    public var lastDate: CalendarDate
    public var count: Int

    public init(symbol: String, firstDate: CalendarDate, lastDate: CalendarDate, count: Int) {
        self.symbol = symbol
        self.firstDate = firstDate
        self.lastDate = lastDate
        self.count = count
    }

    enum CodingKeys: String, CodingKey {
        case symbol, count
        case firstDate = "first_date"
        case lastDate = "last_date"
    }
}

/// Daily simple returns of one symbol changed: event-carried state, so consumers need
/// not call the returns service. Emitted for every `PricesRecorded`, with an empty list
/// when no return changed.
public struct ReturnsCalculated: Event {
    public static let routingKey = "returns.events.returns_calculated"

    public var symbol: String
    public var returns: [DatedValue]

    public init(symbol: String, returns: [DatedValue]) {
        self.symbol = symbol
        self.returns = returns
    }
}

/// An operation started at the returns service failed.
public struct ReturnsOperationFailed: OperationFailedEvent {
    public static let routingKey = "returns.events.operation_failed"

    public var failure: OperationFailure

    public init(_ failure: OperationFailure) { self.failure = failure }
}
