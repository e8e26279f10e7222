@testable import CLIDaemon
import EventCatalog
import Foundation
import Synchronization
import Testing

/// A store in a fresh directory, removed after the test.
final class TempStore {
    let directory: String
    let path: String

    init() {
        directory = NSTemporaryDirectory() + "daemon-test-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path = directory + "/operations.sqlite"
    }

    func open(capacity: Int = 10_000) throws -> OperationsStore { try OperationsStore(path: path, capacity: capacity) }

    deinit { try? FileManager.default.removeItem(atPath: directory) }
}

/// Runs `body` on a new thread: a test that blocks on sockets must not hold one of the few
/// threads every concurrently running test shares.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
    }
}

/// An expectation on a thread of its own (where Swift Testing's `#expect` has no test to
/// report to): a failure is thrown, and the test that awaited the thread fails with it.
func check(_ condition: Bool, _ what: String = "", file: String = #fileID, line: Int = #line) throws {
    guard condition else { throw DaemonError("check failed at \(file):\(line) \(what)") }
}

/// The boundary's event message for an operation, as it sends it over `/ws`.
func event(_ op: String, _ routingKey: String, id: String = UUID().uuidString.lowercased()) -> String {
    #"{"type":"event","routing_key":"\#(routingKey)","event_id":"\#(id)","correlation_id":"\#(op)","payload":{},"timestamp":"2026-01-01T00:00:00Z"}"#
}

/// What a waiter was told, collected.
final class Collected: Sendable {
    let updates = Mutex<[DaemonCore.WaitUpdate]>([])
    var all: [DaemonCore.WaitUpdate] { updates.withLock { $0 } }
    var waiter: DaemonCore.Waiter { { update in self.updates.withLock { $0.append(update) } } }
}

let recorded = PricesRecorded.routingKey
let calculated = ReturnsCalculated.routingKey
let updated = CorrelationsUpdated.routingKey
let failedKey = "correlations.events.operation_failed"

@Suite("The CLI daemon's core")
struct DaemonCoreTests {
    @Test("an operation resolves from the events the daemon counted, each event id once")
    func resolves() throws {
        let temp = TempStore()
        let core = try DaemonCore(store: try temp.open())
        let op = UUID().uuidString.lowercased()
        try core.register(op.uppercased(), command: "record_prices")
        let subscriptions = core.connected()
        #expect(subscriptions == [#"{"action":"subscribe","operation":"\#(op)"}"#])
        let collected = Collected()
        let outcomes = Mutex<[OperationRecord]>([])
        _ = core.follow { record in outcomes.withLock { $0.append(record) } }
        _ = try core.wait(op, waiter: collected.waiter)

        let first = event(op, recorded)
        #expect(core.received(first) == nil)
        #expect(core.received(first) == nil)  // a replay: counted once
        core.received(event(op, calculated))
        #expect(try temp.open().operation(op)?.0.status == "pending")
        #expect(outcomes.withLock { $0.isEmpty })
        core.received(event(op, updated))

        let (record, events) = try #require(try temp.open().operation(op))
        #expect(record.status == "succeeded" && record.events == 3 && record.command == "record_prices")
        #expect(record.resolvedAt != nil)
        #expect(events.map(\.routingKey) == [recorded, calculated, updated])
        #expect(collected.all.count == 4)
        #expect(collected.all.last == .outcome(#"{"type":"operation","operation_id":"\#(op)","status":"succeeded"}"#))
        #expect(outcomes.withLock { $0.map(\.status) } == ["succeeded"])
        // No longer followed: the subscription is given back.
        #expect(core.takeOutgoing() == [#"{"action":"unsubscribe","operation":"\#(op)"}"#])
        #expect(core.status.pending == 0)
    }

    @Test("the boundary's own verdicts change nothing: a restarted boundary says timed_out, the events decide")
    func boundaryVerdictsIgnored() throws {
        let temp = TempStore()
        let core = try DaemonCore(store: try temp.open())
        let op = UUID().uuidString.lowercased()
        try core.register(op, command: "record_prices")
        _ = core.connected()
        core.received(event(op, recorded))
        // The boundary dies; a new one never saw prices_recorded and times the operation out.
        core.disconnected("the boundary closed the connection")
        #expect(core.status.link.connected == false)
        #expect(core.connected() == [#"{"action":"subscribe","operation":"\#(op)"}"#])
        #expect(core.received(#"{"type":"operation","operation_id":"\#(op)","status":"timed_out"}"#) == nil)
        #expect(core.received(#"{"type":"operation","operation_id":"\#(op)","status":"succeeded"}"#) == nil)
        #expect(try temp.open().operation(op)?.0.status == "pending")
        core.received(event(op, updated))
        #expect(try temp.open().operation(op)?.0.status == "succeeded")
    }

    @Test("a daemon restarted mid-operation picks its counts up from the store")
    func restart() throws {
        let temp = TempStore()
        let op = UUID().uuidString.lowercased()
        let started = UUID().uuidString.lowercased()
        do {
            let core = try DaemonCore(store: try temp.open())
            try core.register(op, command: "add_window")
            _ = core.connected()
            core.received(event(op, WindowAdded.routingKey, id: started))
        }
        let core = try DaemonCore(store: try temp.open())
        #expect(core.status.pending == 1)
        #expect(core.connected().count == 1)
        // The boundary replays the starting event (counted already), then the resolving one.
        core.received(event(op, WindowAdded.routingKey, id: started))
        #expect(try temp.open().operation(op)?.0.events == 1)
        core.received(event(op, updated))
        let record = try #require(try temp.open().operation(op)?.0)
        #expect(record.status == "succeeded" && record.events == 2 && record.command == "add_window")
        // A waiter that comes after the outcome gets the stored events and the outcome at once.
        let collected = Collected()
        _ = try core.wait(op, waiter: collected.waiter)
        #expect(collected.all.count == 3)
        if case .event(let line) = collected.all[0] { #expect(line.contains(started)) } else { Issue.record("not an event") }
    }

    @Test("operation_failed fails it; silence past the deadline times it out and tells the waiter")
    func failedAndTimedOut() throws {
        let temp = TempStore()
        let core = try DaemonCore(store: try temp.open(), operationTimeout: 5)
        let failing = UUID().uuidString.lowercased(), silent = UUID().uuidString.lowercased()
        let now = Date().timeIntervalSince1970
        try core.register(failing, command: "record_prices", submitted: now)
        try core.register(silent, command: "record_prices", submitted: now)
        _ = core.connected()
        core.received(event(failing, failedKey))
        #expect(try temp.open().operation(failing)?.0.status == "failed")
        let collected = Collected()
        _ = try core.wait(silent, waiter: collected.waiter)
        core.sweep(now: now + 4)
        #expect(collected.all.isEmpty)
        core.sweep(now: now + 6)
        #expect(collected.all == [.outcome(#"{"type":"operation","operation_id":"\#(silent)","status":"timed_out"}"#)])
        #expect(try temp.open().operation(silent)?.0.status == "timed_out")
        // Resolved is final: a late event changes nothing.
        core.received(event(silent, updated))
        #expect(try temp.open().operation(silent)?.0.events == 0)
    }

    @Test("past the boundary's subscription limit, operations wait for a slot, oldest first")
    func subscriptionLimit() throws {
        let temp = TempStore()
        let core = try DaemonCore(store: try temp.open(), maxSubscriptions: 2)
        let ops = (0..<3).map { _ in UUID().uuidString.lowercased() }
        for (i, op) in ops.enumerated() { try core.register(op, command: "record_prices", submitted: 1000 + Double(i)) }
        #expect(core.connected() == ops.prefix(2).map { #"{"action":"subscribe","operation":"\#($0)"}"# })
        core.received(event(ops[0], failedKey))
        #expect(core.takeOutgoing() == [#"{"action":"unsubscribe","operation":"\#(ops[0])"}"#,
                                        #"{"action":"subscribe","operation":"\#(ops[2])"}"#])
        #expect(core.status.subscribed == 2)
    }

    @Test("events of operations not followed, and hostile messages, are left alone")
    func hostile() throws {
        let temp = TempStore()
        let core = try DaemonCore(store: try temp.open())
        let op = UUID().uuidString.lowercased()
        try core.register(op, command: "record_prices")
        _ = core.connected()
        #expect(core.received(event(UUID().uuidString, updated)) == nil)
        for text in ["", "[]", "null", "{", #"{"type":1}"#, #"{"type":"event"}"#,
                     #"{"type":"event","correlation_id":"not-a-uuid","event_id":"e","routing_key":"k"}"#,
                     #"{"type":"event","correlation_id":"\#(op)","event_id":"","routing_key":"k"}"#,
                     String(repeating: "[", count: 100_000)] {
            #expect(core.received(text) != nil, "\(text.prefix(80))")
        }
        #expect(core.received(#"{"type":"error","message":"at most 1000 subscriptions per client"}"#)?.contains("refused") == true)
        // A message with line breaks between its tokens is stored on one line.
        core.received("{\"type\":\"event\",\n\"routing_key\":\"\(recorded)\",\r\n\"event_id\":\"x1\",\"correlation_id\":\"\(op)\"}")
        let stored = try #require(try temp.open().operation(op)?.1.first)
        #expect(!stored.message.contains("\n") && !stored.message.contains("\r"))
        #expect(try temp.open().operation(op)?.0.status == "pending")
    }

    @Test("register keeps what it knows: the first command given wins over a wait's '-'")
    func registerTwice() throws {
        let temp = TempStore()
        let core = try DaemonCore(store: try temp.open())
        let op = UUID().uuidString.lowercased()
        try core.register(op, command: "-", submitted: 10)
        try core.register(op, command: "add_window", submitted: 20)
        try core.register(op, command: "record_prices", submitted: 30)
        let record = try #require(try temp.open().operation(op)?.0)
        #expect(record.command == "add_window" && record.submitted == 10)
        #expect(throws: DaemonError.self) { try core.register("nope", command: "x") }
    }

    @Test("the store keeps the newest operations past its capacity, never a pending one")
    func capacity() throws {
        let temp = TempStore()
        let store = try temp.open(capacity: 3)
        let ids = (0..<5).map { _ in UUID().uuidString.lowercased() }
        for (i, id) in ids.enumerated() {
            _ = try store.register(OperationRecord(operationId: id, command: "c", submitted: Double(i + 1)))
            if i != 0 { try store.resolve(id, status: "timed_out", at: Double(i + 2)) }
        }
        let kept = try store.list(limit: nil).map(\.operationId)
        #expect(kept.count == 3)
        #expect(kept.contains(ids[0]))  // pending: kept
        #expect(kept.first == ids[4])
        #expect(try OperationsStore.reader(path: temp.path)?.list(limit: 2).map(\.operationId) == [ids[4], ids[3]])
    }
}

@Suite("The daemon's protocol")
struct DaemonProtocolTests {
    @Test("requests parse, and each bad one gets its reason")
    func requests() {
        let op = UUID()
        #expect(DaemonRequest.parse(#"{"request":"status"}"#) == .success(.status))
        #expect(DaemonRequest.parse(#"{"request":"wait","operation_id":"\#(op.uuidString)","command":"add_window","submitted":12.5}"#)
            == .success(.wait(operation: op.uuidString.lowercased(), command: "add_window", submitted: 12.5)))
        #expect(DaemonRequest.parse(#"{"request":"register","operation_id":"\#(op.uuidString)"}"#)
            == .success(.register(operation: op.uuidString.lowercased(), command: "-", submitted: nil)))
        for bad in ["", "status", "{}", #"{"request":5}"#, #"{"request":"launch"}"#, #"{"request":"wait"}"#,
                    #"{"request":"wait","operation_id":"1"}"#,
                    #"{"request":"register","operation_id":"\#(op)","command":"Rm -rf"}"#,
                    #"{"request":"register","operation_id":"\#(op)","command":"\#(String(repeating: "a", count: 65))"}"#] {
            guard case .failure = DaemonRequest.parse(bad) else {
                Issue.record("accepted \(bad)")
                continue
            }
        }
        // A bogus time is ignored (the daemon's clock is used), not an error.
        #expect(DaemonRequest.parse(#"{"request":"register","operation_id":"\#(op)","submitted":1e300}"#)
            == .success(.register(operation: op.uuidString.lowercased(), command: "-", submitted: nil)))
    }

    @Test("a real unix socket: mode 0600, hostile lines answered, an over-long line ends the connection")
    func socket() async throws {
        // Blocking socket calls run on a thread of their own, never on the test pool's.
        try await onThread { try Self.socketScenario() }
    }

    static func socketScenario() throws {
        let temp = TempStore()
        let core = try DaemonCore(store: try temp.open())
        let path = temp.directory + "/s.sock"
        let listener = try UnixSocket.listen(path: path)
        var info = stat()
        try check(lstat(path, &info) == 0 && info.st_mode & 0o777 == 0o600)
        let server = DaemonServer(core: core, listener: listener, logger: .init(label: "test")) { [:] }
        Thread.detachNewThread { server.acceptLoop() }
        defer {
            shutdown(listener, Int32(SHUT_RDWR))
            close(listener)
        }
        guard case .success(let fd) = UnixSocket.connect(path: path) else { throw DaemonError("cannot connect") }
        let connection = LineConnection(fd: fd, receiveTimeout: 5)
        for line in ["garbage", #"{"request":"wait","operation_id":"x"}"#, "\u{0}\u{1}", #"{"request":"status"}"#] {
            connection.write(line)
        }
        let answers = try (0..<4).map { _ in try connection.readLine() ?? "" }
        try check(answers[0...2].allSatisfy { $0.hasPrefix(#"{"message":"#) && $0.contains(#""type":"error""#) })
        try check(answers[3].contains(#""type":"status""#) && answers[3].contains(#""pending":0"#))
        // Longer than a line may be: an error, then the daemon hangs up — after taking the rest
        // of what the client sends, so that the client's send does not fail before it reads.
        try check(connection.write(String(repeating: "x", count: LineConnection.maxLine + (2 << 20))), "the whole line sent")
        try check(try connection.readLine()?.contains("at most") == true, "the over-long line's error")
        try check(try connection.readLine() == nil)
        // A socket nobody listens on reads as stale; a plain file as not a socket.
        let stale = temp.directory + "/stale.sock"
        let orphan = try UnixSocket.listen(path: stale)
        close(orphan)
        try check(UnixSocket.connect(path: stale) == .failure(.refused))
        _ = FileManager.default.createFile(atPath: temp.directory + "/file", contents: Data())
        try check(UnixSocket.connect(path: temp.directory + "/file") == .failure(.notSocket))
        try check(UnixSocket.connect(path: temp.directory + "/none") == .failure(.missing))
    }
}

@Suite("The daemon's files")
struct DaemonPathsTests {
    @Test("a stale socket: claims racing each other all succeed; start's check never removes it")
    func staleSocketClaims() async throws {
        try await onThread { try Self.staleSocketScenario() }
    }

    static func staleSocketScenario() throws {
        let temp = TempStore()
        let paths = DaemonPaths(home: temp.directory, socketDirectory: temp.directory)
        func leaveStale() throws {
            let orphan = try UnixSocket.listen(path: paths.socket)
            close(orphan)
        }
        // `start`'s check: a stale socket is fine to start over, and stays for the daemon.
        try leaveStale()
        try DaemonRuntime.claimSocketPath(paths, removingStale: false)
        try check(UnixSocket.connect(path: paths.socket) == .failure(.refused), "the check left the socket")
        // Several claimers that all saw it stale: whichever removes it, none fails for the
        // others' removal (each round lines them up at once on a barrier).
        let claimers = 6
        for round in 0..<200 {
            try? FileManager.default.removeItem(atPath: paths.socket)
            try leaveStale()
            let failures = Mutex<[String]>([])
            let ready = DispatchGroup(), go = DispatchSemaphore(value: 0), done = DispatchGroup()
            for _ in 0..<claimers {
                ready.enter(); done.enter()
                Thread.detachNewThread {
                    ready.leave()
                    go.wait()
                    do { try DaemonRuntime.claimSocketPath(paths) } catch { failures.withLock { $0.append("\(error)") } }
                    done.leave()
                }
            }
            ready.wait()
            for _ in 0..<claimers { go.signal() }
            done.wait()
            try check(failures.withLock { $0 }.isEmpty, "round \(round): \(failures.withLock { $0 })")
            try check(UnixSocket.connect(path: paths.socket) == .failure(.missing), "round \(round): removed")
        }
    }

    @Test("STEGA_HOME holds all four; else the socket goes to XDG_RUNTIME_DIR, the rest to ~/.stega")
    func paths() {
        let moved = DaemonPaths(environment: ["STEGA_HOME": "/srv/s", "XDG_RUNTIME_DIR": "/run/user/7", "HOME": "/home/u"])
        #expect([moved.socket, moved.pidFile, moved.log, moved.database]
            == ["/srv/s/stega.sock", "/srv/s/daemon.pid", "/srv/s/daemon.log", "/srv/s/operations.sqlite"])
        let runtime = DaemonPaths(environment: ["XDG_RUNTIME_DIR": "/run/user/7", "HOME": "/home/u"])
        #expect(runtime.socket == "/run/user/7/stega.sock" && runtime.database == "/home/u/.stega/operations.sqlite")
        let plain = DaemonPaths(environment: ["HOME": "/home/u", "XDG_RUNTIME_DIR": ""])
        #expect(plain.socket == "/home/u/.stega/stega.sock" && plain.pidFile == "/home/u/.stega/daemon.pid")
    }
}
