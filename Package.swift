// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "stega-events",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "returns-api", targets: ["returns-api"]),
        .executable(name: "returns-worker", targets: ["returns-worker"]),
        .executable(name: "correlations-api", targets: ["correlations-api"]),
        .executable(name: "correlations-worker", targets: ["correlations-worker"]),
        .executable(name: "boundary", targets: ["boundary"]),
        .executable(name: "stega", targets: ["stega"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"4.0.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
    ],
    targets: [
        // System libraries from Debian (librabbitmq-dev, libmicrohttpd-dev).
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        .systemLibrary(
            name: "CMicroHTTPD",
            pkgConfig: "libmicrohttpd",
            providers: [.apt(["libmicrohttpd-dev"])]
        ),

        // glibc's <malloc.h> and <sys/eventfd.h>, which Swift's Glibc module leaves out.
        .systemLibrary(name: "CGlibc"),

        .target(name: "EventCatalog"),
        .target(name: "Handoff"),
        .target(
            name: "MessageBus",
            dependencies: [
                "EventCatalog",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(name: "MessageBusTesting", dependencies: ["MessageBus", "EventCatalog"]),
        .target(
            name: "AMQPTransport",
            dependencies: [
                "CRabbitMQ", "CGlibc", "EventCatalog", "MessageBus", "Handoff",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "HTTPServer",
            dependencies: [
                "CMicroHTTPD", "CGlibc", "Handoff",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "ServiceRuntime",
            dependencies: [
                "CGlibc", "EventCatalog", "MessageBus", "AMQPTransport", "HTTPServer", "Handoff",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ]
        ),
        .target(
            name: "Returns",
            dependencies: [
                "EventCatalog", "MessageBus", "HTTPServer", "ServiceRuntime",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            resources: [.copy("openapi.json")]
        ),
        .target(
            name: "Correlations",
            dependencies: [
                "EventCatalog", "MessageBus", "HTTPServer", "ServiceRuntime",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            resources: [.copy("openapi.json")]
        ),
        .target(
            name: "Boundary",
            dependencies: [
                "EventCatalog", "MessageBus", "HTTPServer", "ServiceRuntime", "AMQPTransport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            resources: [.copy("openapi.json"), .copy("Console")]
        ),
        .executableTarget(name: "boundary", dependencies: ["Boundary"]),
        // The CLI's local daemon: the operations store, the unix socket, the boundary link.
        .target(
            name: "CLIDaemon",
            dependencies: ["EventCatalog", "HTTPServer", .product(name: "GRDB", package: "GRDB.swift"),
                           .product(name: "Logging", package: "swift-log")]
        ),
        .executableTarget(
            name: "stega",
            dependencies: ["EventCatalog", "HTTPServer", "CLIDaemon", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Logging", package: "swift-log")]
        ),
        .executableTarget(name: "returns-api", dependencies: ["Returns", "ServiceRuntime"]),
        .executableTarget(name: "correlations-api", dependencies: ["Correlations", "ServiceRuntime"]),
        .executableTarget(name: "correlations-worker", dependencies: ["Correlations", "ServiceRuntime"]),
        .executableTarget(
            name: "stega-bench",
            dependencies: [
                "ServiceRuntime", "MessageBus", "EventCatalog", "HTTPServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(name: "returns-worker", dependencies: ["Returns", "ServiceRuntime"]),

        .testTarget(name: "EventCatalogTests", dependencies: ["EventCatalog"]),
        .testTarget(name: "HandoffTests", dependencies: ["Handoff"]),
        .testTarget(name: "MessageBusTests", dependencies: ["MessageBus", "MessageBusTesting", "EventCatalog"]),
        .testTarget(
            name: "ReturnsTests",
            dependencies: ["Returns", "MessageBus", "EventCatalog", "HTTPServer", "ServiceRuntime"],
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "CorrelationsTests",
            dependencies: ["Correlations", "Returns", "MessageBus", "EventCatalog", "HTTPServer",
                           "ServiceRuntime"],
            exclude: ["Fixtures"]
        ),
        .testTarget(name: "HTTPServerTests", dependencies: ["HTTPServer"]),
        .testTarget(name: "CLIDaemonTests", dependencies: ["CLIDaemon", "EventCatalog", "HTTPServer"]),
        .testTarget(name: "BoundaryTests", dependencies: ["Boundary", "EventCatalog", "HTTPServer", "Returns", "Correlations", "ServiceRuntime", "MessageBus"]),
        .testTarget(
            name: "ServiceRuntimeTests",
            dependencies: ["ServiceRuntime", "AMQPTransport", "HTTPServer", "MessageBus", "MessageBusTesting", "EventCatalog",
                           .product(name: "GRDB", package: "GRDB.swift"),
                           .product(name: "GRDBSQLite", package: "GRDB.swift")]
        ),
        .testTarget(
            name: "StoreConformanceTests",
            dependencies: ["ServiceRuntime", "Returns", "Correlations", "MessageBus", "EventCatalog", "HTTPServer",
                           .product(name: "GRDB", package: "GRDB.swift"),
                           .product(name: "PostgresNIO", package: "postgres-nio")]
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["AMQPTransport", "MessageBus", "MessageBusTesting", "EventCatalog", "ServiceRuntime"]
        ),
    ]
)
