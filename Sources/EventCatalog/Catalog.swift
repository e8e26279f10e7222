/// The catalog of every event in the stega suite, with who publishes and who consumes it.
///
/// Services declare statically what they publish and consume; nobody needs to know
/// another service's handlers. `Catalog.entries` prints the whole picture.
public enum Catalog {
    /// Every event type of the suite.
    public static let eventTypes: [any Event.Type] = [
        PricesRecorded.self,
        ReturnsCalculated.self,
        ReturnsOperationFailed.self,
        WindowAdded.self,
        CorrelationsUpdated.self,
        CorrelationsOperationFailed.self,
    ]

    /// One line of the catalog.
    public struct Entry: Sendable, Equatable {
        public let routingKey: String
        public let publishers: [String]
        public let consumers: [String]
    }

    /// What each process publishes and consumes.
    public static let services: [ServiceDeclaration] = [
        ServiceDeclaration(
            name: "returns-api",
            publishes: [PricesRecorded.routingKey],
            consumes: []),
        ServiceDeclaration(
            name: "returns-worker",
            publishes: [ReturnsCalculated.routingKey, ReturnsOperationFailed.routingKey],
            consumes: [PricesRecorded.routingKey]),
        ServiceDeclaration(
            name: "correlations-api",
            publishes: [WindowAdded.routingKey],
            consumes: []),
        ServiceDeclaration(
            name: "boundary",
            publishes: [],
            consumes: Catalog.eventTypes.map { $0.routingKey }),
        ServiceDeclaration(
            name: "correlations-worker",
            publishes: [CorrelationsUpdated.routingKey, CorrelationsOperationFailed.routingKey],
            consumes: [ReturnsCalculated.routingKey, WindowAdded.routingKey]),
    ]

    /// The event type with this routing key, if any.
    public static func eventType(forRoutingKey key: String) -> (any Event.Type)? {
        eventTypes.first { $0.routingKey == key }
    }

    /// Every routing key with its publishers and consumers.
    public static var entries: [Entry] {
        eventTypes.map { type in
            Entry(routingKey: type.routingKey,
                  publishers: services.filter { $0.publishes.contains(type.routingKey) }.map(\.name),
                  consumers: services.filter { $0.consumes.contains(type.routingKey) }.map(\.name))
        }
    }
}

/// What one executable publishes and consumes.
public struct ServiceDeclaration: Sendable, Equatable {
    public let name: String
    public let publishes: [String]
    public let consumes: [String]

    public init(name: String, publishes: [String], consumes: [String]) {
        self.name = name
        self.publishes = publishes
        self.consumes = consumes
    }
}
