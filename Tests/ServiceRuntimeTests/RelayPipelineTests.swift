import EventCatalog
import Foundation
import MessageBus
@testable import ServiceRuntime
import Synchronization
import Testing

/// A publisher whose every call waits until the test settles it (the broker's confirm, or a
/// failure); once `open`, calls return at once.
final class GatedPublisher: EventPublisher {
    private struct Call {
        let envelopes: [EventEnvelope]
        let gate: CheckedContinuation<Void, any Error>
    }

    private let calls = Mutex<[Call]>([])
    private let out = Mutex<[EventEnvelope]>([])
    let open = Atomic<Bool>(false)

    func publish(_ envelopes: [EventEnvelope]) async throws {
        if !open.load(ordering: .relaxed) {
            try await withCheckedThrowingContinuation { gate in
                calls.withLock { $0.append(Call(envelopes: envelopes, gate: gate)) }
            }
        }
        out.withLock { $0.append(contentsOf: envelopes) }
    }

    /// Calls waiting to be settled.
    var waiting: Int { calls.withLock { $0.count } }
    /// What went out, in the order the calls were settled.
    var published: [EventEnvelope] { out.withLock { $0 } }

    /// Settles the waiting call at `index` (0: the oldest).
    func settle(_ index: Int, failing: Bool = false) {
        let call = calls.withLock { $0.remove(at: index) }
        if failing {
            struct Nacked: Error {}
            call.gate.resume(throwing: Nacked())
        } else {
            call.gate.resume()
        }
    }

    func wait(until calls: Int) async throws {
        let deadline = Date().addingTimeInterval(10)
        while waiting < calls, Date() < deadline { try await Task.sleep(for: .milliseconds(5)) }
    }
}

@Suite("Outbox relay pipeline")
struct RelayPipelineTests {
    /// A relay (batches of 5, up to 3 in flight) given 10 events in two writes, each write's
    /// batch handed to the publisher before the next write: both batches are then waiting.
    func twoBatchesWaiting(_ body: (ServiceDatabase, GatedPublisher, [EventEnvelope]) async throws -> Void) async throws {
        let (database, dir) = try temporaryDatabase()
        defer { try? FileManager.default.removeItem(at: dir) }
        let publisher = GatedPublisher()
        let relay = OutboxRelay(database: database, publisher: publisher, batchSize: 5, maxInFlight: 3)
        let task = Task { try await relay.run() }
        defer { task.cancel() }
        let sent = try (0..<10).map { try EventEnvelope(WindowAdded(window: $0)) }
        try await database.store(Array(sent[0..<5]))
        try await publisher.wait(until: 1)
        try await database.store(Array(sent[5..<10]))
        try await publisher.wait(until: 2)
        // Both batches are with the publisher at once: the second did not wait for the first.
        #expect(publisher.waiting == 2)
        try await body(database, publisher, sent)
    }

    @Test("a batch of committed rows goes out while the one before still waits for its confirm; all in order, once")
    func batchesDoNotWaitForEarlierConfirms() async throws {
        try await twoBatchesWaiting { database, publisher, sent in
            publisher.settle(0)
            publisher.settle(0)
            try await OutboxTests().waitUntilEmpty(database, before: Date().addingTimeInterval(10))
            #expect(publisher.published.map(\.eventId) == sent.map(\.eventId))
        }
    }

    @Test("a batch that fails while a later one is confirmed is published again, and nothing twice")
    func failedBatchInFlightIsPublishedAgain() async throws {
        try await twoBatchesWaiting { database, publisher, sent in
            publisher.open.store(true, ordering: .relaxed)
            publisher.settle(0, failing: true)  // the first batch: nacked
            publisher.settle(0)                 // the second: confirmed
            try await OutboxTests().waitUntilEmpty(database, before: Date().addingTimeInterval(10))
            let ids = publisher.published.map(\.eventId)
            #expect(ids.count == 10)
            #expect(Set(ids) == Set(sent.map(\.eventId)))
            // The failed batch went out again, in its own order, after the confirmed one.
            #expect(ids == sent[5..<10].map(\.eventId) + sent[0..<5].map(\.eventId))
        }
    }
}
