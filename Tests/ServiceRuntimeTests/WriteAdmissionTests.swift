import EventCatalog
import Foundation
import MessageBus
@testable import ServiceRuntime
import Synchronization
import Testing

@Suite("Backpressure on commands while the relay is behind")
struct WriteAdmissionTests {
    /// Whether `admit()` has returned, checked from the test.
    final class Flag: Sendable {
        let value = Atomic<Bool>(false)
        var isSet: Bool { value.load(ordering: .acquiring) }
        func set() { value.store(true, ordering: .releasing) }
    }

    func settle() async throws { try await Task.sleep(for: .milliseconds(100)) }

    @Test("open: a command goes through; closed: it waits until the gate opens")
    func waitsWhileClosed() async throws {
        let gate = WriteAdmission(maxWait: .seconds(30))
        await gate.admit()  // open: returns at once (the test would hang otherwise)
        gate.close()
        #expect(gate.isClosed)
        let admitted = Flag()
        let waiter = Task {
            await gate.admit()
            admitted.set()
        }
        try await settle()
        #expect(!admitted.isSet)
        gate.open()
        await waiter.value
        #expect(admitted.isSet)
        #expect(!gate.isClosed)
    }

    @Test("a command goes through after its longest wait, even if nobody opens the gate; the gate stays closed for the others")
    func longestWait() async throws {
        let gate = WriteAdmission(maxWait: .milliseconds(300))
        gate.close()
        let start = ContinuousClock.now
        await gate.admit()
        let waited = ContinuousClock.now - start
        #expect(waited >= .milliseconds(250))
        #expect(gate.isClosed)
        // The next command waits its own time. Measured inside the task rather than peeked at
        // after a sleep: on a loaded machine the sleep itself can outlast the 300 ms.
        let next = Task {
            let start = ContinuousClock.now
            await gate.admit()
            return ContinuousClock.now - start
        }
        #expect(await next.value >= .milliseconds(250))
        #expect(gate.isClosed)
    }

    @Test("the relay closes the gate while too many rows wait for their confirms, and opens it as they are confirmed")
    func relayHoldsCommands() async throws {
        // The gate's own time limit out of the way: on a loaded machine the steps below can
        // take longer than the 1 s default.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("admission-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let database = try ServiceDatabase(path: dir.appendingPathComponent("t.sqlite").path, admissionMaxWait: .seconds(120))
        let publisher = GatedPublisher()
        let relay = OutboxRelay(database: database, publisher: publisher, batchSize: 5, maxInFlight: 3,
                                admissionHigh: 10, admissionLow: 5)
        let task = Task { try await relay.run() }
        defer { task.cancel() }
        let sent = try (0..<10).map { try EventEnvelope(WindowAdded(window: $0)) }
        try await database.store(Array(sent[0..<5]))
        try await publisher.wait(until: 1)
        #expect(!database.admission.isClosed)  // 5 waiting: below the high mark
        try await database.store(Array(sent[5..<10]))
        try await publisher.wait(until: 2)
        try await settle()
        #expect(database.admission.isClosed)  // 10 waiting

        // A command now waits; an event handler's write does not.
        let command = Flag()
        let write = Task {
            try await database.write(HandlerContext(metadata: .newOperation(), appId: "test")) { _ in }
            command.set()
        }
        let handled = try await database.write(
            HandlerContext(metadata: .newOperation(), appId: "test", handledEventId: UUID.random())) { _ in }
        #expect(handled)
        try await settle()
        #expect(!command.isSet)

        publisher.settle(0)  // 5 left: the low mark
        try await write.value
        #expect(command.isSet)
        #expect(!database.admission.isClosed)
        publisher.settle(0)
        try await OutboxTests().waitUntilEmpty(database, before: Date().addingTimeInterval(10))
        #expect(publisher.published.map(\.eventId) == sent.map(\.eventId))
    }
}
