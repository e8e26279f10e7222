import EventCatalog
import Foundation
@testable import ServiceRuntime
import Testing

/// The outbox relay's decisions, without a database, a broker or a clock.
@Suite("Outbox relay state machine")
struct RelayStateMachineTests {
    typealias Machine = OutboxRelay.StateMachine
    struct Nacked: Error {}

    let start = ContinuousClock.now

    func machine(batchSize: Int = 2, maxInFlight: Int = 2, feedLimit: Int = 10,
                 admissionHigh: Int = 6, admissionLow: Int = 2) -> Machine {
        Machine(batchSize: batchSize, maxInFlight: maxInFlight, feedLimit: feedLimit, admissionHigh: admissionHigh,
                admissionLow: admissionLow, flushTimeout: .seconds(5), now: start)
    }

    func rows(_ seqs: ClosedRange<Int64>) -> [OutboxRelay.Row] {
        seqs.map { ($0, EventEnvelope(routingKey: "test.events.row", appId: "t", body: Data())) }
    }

    func at(_ seconds: Double) -> ContinuousClock.Instant { start + .milliseconds(Int64(seconds * 1000)) }

    /// Runs the start-up sweep of others' rows, which finds nothing.
    func pastStartupSweep(_ m: inout Machine) {
        guard case .claim(_, includeOwn: false, after: _) = m.next(taken: ([], false), feedOpen: true, now: at(0)) else {
            Issue.record("expected the start-up sweep")
            return
        }
        #expect(m.claimed([], now: at(0)).map { _ in true } == nil)
        #expect(m.sweep == .none)
    }

    func seqs(_ decision: Machine.Decision) -> [Int64]? {
        switch decision {
        case .publish(let batch): batch.map(\.0)
        default: nil
        }
    }

    func isWait(_ decision: Machine.Decision) -> Bool {
        if case .wait = decision { return true }
        return false
    }

    @Test("at start it sweeps for rows other processes left, then idles")
    func startupSweep() {
        var m = machine()
        guard case .claim(let limit, let includeOwn, let after) = m.next(taken: ([], false), feedOpen: true, now: at(0)) else {
            Issue.record("expected a claim")
            return
        }
        #expect(limit == 2 && !includeOwn && after == 0)
        // Others' rows found: published, and deleted once out.
        #expect(seqs(m.claimed(rows(1...2), now: at(0))!) == [1, 2])
        m.settled(rows(1...2), error: nil)
        guard case .published(let batch) = m.takeEffects().first else { Issue.record("expected a deletion"); return }
        #expect(batch.map(\.0) == [1, 2])
        // The next claim starts after the last row claimed, and finds nothing: the sweep ends
        // and the relay waits for the bell.
        guard case .claim(_, _, after: 2) = m.next(taken: ([], false), feedOpen: true, now: at(0)) else {
            Issue.record("expected a claim after row 2")
            return
        }
        #expect(m.claimed([], now: at(0)).map { _ in true } == nil)
        #expect(isWait(m.next(taken: ([], false), feedOpen: true, now: at(0.1))))
    }

    @Test("committed rows go out in batches, at most maxInFlight at once, without waiting for each other")
    func pipelined() {
        var m = machine()
        pastStartupSweep(&m)
        #expect(seqs(m.next(taken: (rows(1...5), false), feedOpen: true, now: at(0.1))) == [1, 2])
        #expect(seqs(m.next(taken: ([], false), feedOpen: true, now: at(0.1))) == [3, 4])
        #expect(m.inFlight == 2)
        // The cap: the fifth row waits for a batch to settle.
        #expect(isWait(m.next(taken: ([], false), feedOpen: true, now: at(0.1))))
        m.settled(rows(1...2), error: nil)
        #expect(seqs(m.next(taken: ([], false), feedOpen: true, now: at(0.1))) == [5])
        let deleted = m.takeEffects().compactMap { effect -> [Int64]? in
            if case .published(let batch) = effect { return batch.map(\.0) }
            return nil
        }
        #expect(deleted == [[1, 2]])
    }

    @Test("a failed batch: the others in flight end first, then a back-off, then a sweep of every row, in order")
    func failureThenSweepOfAll() {
        var m = machine()
        pastStartupSweep(&m)
        _ = m.next(taken: (rows(1...4), false), feedOpen: true, now: at(0.1))
        _ = m.next(taken: ([], false), feedOpen: true, now: at(0.1))
        _ = m.takeEffects()
        m.settled(rows(1...2), error: Nacked())
        // [3, 4] is still in flight: wait for it before anything else.
        #expect(isWait(m.next(taken: (rows(5...5), false), feedOpen: true, now: at(0.2))))
        m.settled(rows(3...4), error: nil)
        guard case .backOff(let delay) = m.next(taken: ([], false), feedOpen: true, now: at(0.3)) else {
            Issue.record("expected a back-off")
            return
        }
        #expect(delay == .milliseconds(200))
        let effects = m.takeEffects()
        #expect(effects.contains { if case .feed(open: false) = $0 { true } else { false } })
        #expect(effects.contains { if case .publishFailed(_, _, attempt: 1) = $0 { true } else { false } })
        #expect(m.committed.isEmpty && m.sweep == .all)
        // The sweep claims every row this relay claimed; the feed stays closed meanwhile.
        guard case .claim(_, includeOwn: true, after: _) = m.next(taken: ([], false), feedOpen: false, now: at(0.5)) else {
            Issue.record("expected a claim of every row")
            return
        }
        #expect(!m.takeEffects().contains { if case .feed(open: true) = $0 { true } else { false } })
        #expect(seqs(m.claimed(rows(1...2), now: at(0.5))!) == [1, 2])
        m.settled(rows(1...2), error: nil)
        #expect(m.takeEffects().contains { if case .publishingAgain(rows: 2) = $0 { true } else { false } })
        guard case .claim(_, includeOwn: true, after: 2) = m.next(taken: ([], false), feedOpen: false, now: at(0.5)) else {
            Issue.record("expected the next claim")
            return
        }
        #expect(seqs(m.claimed(rows(5...5), now: at(0.5))!) == [5])
        m.settled(rows(5...5), error: nil)
        // A short claim: the feed opens again for the last claims.
        guard case .claim = m.next(taken: ([], false), feedOpen: false, now: at(0.6)) else { Issue.record("claim"); return }
        #expect(m.takeEffects().contains { if case .feed(open: true) = $0 { true } else { false } })
        // The feed was closed when that claim began: claim again once it is open.
        #expect(m.claimed([], now: at(0.6)).map { _ in true } == nil)
        guard case .claim = m.next(taken: ([], false), feedOpen: true, now: at(0.6)) else { Issue.record("claim"); return }
        #expect(m.claimed([], now: at(0.6)).map { _ in true } == nil)
        // Rows the sweep published, fed again, are dropped; a later one goes out.
        #expect(seqs(m.next(taken: (rows(5...6), false), feedOpen: true, now: at(0.7))) == [6])
        #expect(m.sweep == .none && m.failures == 0)
    }

    @Test("failures in a row back off longer, up to 2 s")
    func backOffGrows() {
        var m = machine()
        pastStartupSweep(&m)
        _ = m.next(taken: (rows(1...1), false), feedOpen: true, now: at(0.1))
        m.settled(rows(1...1), error: Nacked())
        var delays: [Duration] = []
        guard case .backOff(let first) = m.next(taken: ([], false), feedOpen: true, now: at(0.2)) else {
            Issue.record("expected a back-off")
            return
        }
        delays.append(first)
        for _ in 0..<5 {
            guard case .claim(_, includeOwn: true, after: _) = m.next(taken: ([], false), feedOpen: false, now: at(1)) else {
                Issue.record("expected a claim of every row")
                return
            }
            _ = m.claimed(rows(1...1), now: at(1))
            m.settled(rows(1...1), error: Nacked())
            guard case .backOff(let delay) = m.next(taken: ([], false), feedOpen: false, now: at(1)) else {
                Issue.record("back-off")
                return
            }
            delays.append(delay)
        }
        #expect(delays == [.milliseconds(200), .milliseconds(400), .milliseconds(800), .milliseconds(1600),
                           .milliseconds(2000), .milliseconds(2000)])
    }

    @Test("a sweep's batches are pipelined: each claim starts after the last, up to maxInFlight; a failure sweeps again from the start")
    func pipelinedSweep() {
        var m = machine(feedLimit: 3)
        pastStartupSweep(&m)
        guard case .claim(_, includeOwn: true, after: 0) = m.next(taken: (rows(1...4), false), feedOpen: true, now: at(0.1)) else {
            Issue.record("expected a sweep of every row")
            return
        }
        #expect(seqs(m.claimed(rows(1...2), now: at(0.1))!) == [1, 2])
        // Not waited for: the next claim follows at once, after row 2.
        guard case .claim(_, includeOwn: true, after: 2) = m.next(taken: ([], false), feedOpen: false, now: at(0.1)) else {
            Issue.record("expected a claim after row 2 with a batch in flight")
            return
        }
        #expect(seqs(m.claimed(rows(3...4), now: at(0.1))!) == [3, 4])
        #expect(m.inFlight == 2)
        // The cap: the next claim waits for a batch to settle.
        #expect(isWait(m.next(taken: ([], false), feedOpen: false, now: at(0.1))))
        m.settled(rows(1...2), error: nil)
        guard case .claim(_, includeOwn: true, after: 4) = m.next(taken: ([], false), feedOpen: false, now: at(0.2)) else {
            Issue.record("expected a claim after row 4")
            return
        }
        #expect(seqs(m.claimed(rows(5...6), now: at(0.2))!) == [5, 6])
        // [3, 4] fails: [5, 6] ends first, then a back-off, then the sweep starts over from the
        // first row (the table still holds 3 and 4, and 5 and 6 if they failed too).
        m.settled(rows(3...4), error: Nacked())
        #expect(isWait(m.next(taken: ([], false), feedOpen: false, now: at(0.3))))
        m.settled(rows(5...6), error: nil)
        guard case .backOff = m.next(taken: ([], false), feedOpen: false, now: at(0.3)) else {
            Issue.record("expected a back-off")
            return
        }
        guard case .claim(_, includeOwn: true, after: 0) = m.next(taken: ([], false), feedOpen: false, now: at(0.6)) else {
            Issue.record("expected the sweep to start over")
            return
        }
    }

    @Test("more committed rows than the feed holds: dropped from memory, swept from the table")
    func overflow() {
        var m = machine(feedLimit: 3)
        pastStartupSweep(&m)
        guard case .claim(_, includeOwn: true, after: _) = m.next(taken: (rows(1...4), false), feedOpen: true, now: at(0.1)) else {
            Issue.record("expected a sweep of every row")
            return
        }
        #expect(m.committed.isEmpty)
        var n = machine()
        pastStartupSweep(&n)
        // The feed itself overflowed (it closed and dropped its rows).
        guard case .claim(_, includeOwn: true, after: _) = n.next(taken: ([], true), feedOpen: false, now: at(0.1)) else {
            Issue.record("expected a sweep of every row")
            return
        }
    }

    @Test("idle, or 5 s after the last sweep, it sweeps for others' rows")
    func periodicSweep() {
        var m = machine()
        pastStartupSweep(&m)
        #expect(isWait(m.next(taken: ([], false), feedOpen: true, now: at(0.1))))
        // Woken with nothing new after a wait: idle.
        guard case .claim(_, includeOwn: false, after: _) = m.next(taken: ([], false), feedOpen: true, now: at(1.1)) else {
            Issue.record("expected an idle sweep")
            return
        }
        #expect(m.claimed([], now: at(1.1)).map { _ in true } == nil)
        // Busy all along: the sweep comes after 5 s anyway.
        _ = m.next(taken: (rows(1...1), false), feedOpen: true, now: at(2))
        m.settled(rows(1...1), error: nil)
        #expect(seqs(m.next(taken: (rows(2...2), false), feedOpen: true, now: at(6))) == [2])
        m.settled(rows(2...2), error: nil)
        guard case .claim(_, includeOwn: false, after: _) = m.next(taken: (rows(3...3), false), feedOpen: true, now: at(6.2)) else {
            Issue.record("expected the periodic sweep")
            return
        }
    }

    @Test("commands wait while more than admissionHigh rows lag, until admissionLow do")
    func admission() {
        var m = machine(batchSize: 1, maxInFlight: 1, feedLimit: 100, admissionHigh: 6, admissionLow: 2)
        pastStartupSweep(&m)
        _ = m.takeEffects()
        _ = m.next(taken: (rows(1...6), false), feedOpen: true, now: at(0.1))
        #expect(m.takeEffects().contains { if case .admission(open: false) = $0 { true } else { false } })
        var seq: Int64 = 1
        var opened = false
        while !opened, seq <= 6 {
            m.settled(rows(seq...seq), error: nil)
            _ = m.next(taken: ([], false), feedOpen: true, now: at(0.2))
            opened = m.takeEffects().contains { if case .admission(open: true) = $0 { true } else { false } }
            seq += 1
        }
        // Opened once 2 rows lagged: 6 committed, 4 settled.
        #expect(opened && seq == 5)
    }

    @Test("stopping: it finishes once nothing waits or is in flight, or at the flush deadline")
    func stopping() {
        var m = machine()
        pastStartupSweep(&m)
        _ = m.next(taken: (rows(1...2), false), feedOpen: true, now: at(0.1))
        m.stop()
        #expect(isWait(m.next(taken: ([], false), feedOpen: true, now: at(0.2))))
        m.settled(rows(1...2), error: nil)
        guard case .finish = m.next(taken: ([], false), feedOpen: true, now: at(0.3)) else {
            Issue.record("expected to finish")
            return
        }
        var n = machine()
        pastStartupSweep(&n)
        _ = n.next(taken: (rows(1...2), false), feedOpen: true, now: at(0.1))
        n.stop()
        _ = n.next(taken: ([], false), feedOpen: true, now: at(0.2))
        guard case .finish = n.next(taken: ([], false), feedOpen: true, now: at(5.3)) else {
            Issue.record("expected to finish at the flush deadline with a batch still in flight")
            return
        }
    }
}
