import EventCatalog

extension OutboxRelay {
    /// An outbox row: its sequence number and its event.
    typealias Row = (Int64, EventEnvelope)

    /// The relay's decisions, as a value: rows and outcomes in, what to do next out. It does no
    /// I/O and reads no clock (the loop passes the time in), so every path is tested without a
    /// database or a broker (`RelayStateMachineTests`); ``OutboxRelay`` runs it and does the I/O.
    ///
    /// Each turn the loop hands ``next(taken:feedOpen:now:)`` the rows committed since the last
    /// turn and gets one ``Decision``; what it learns on the way (a pipelined batch's outcome, a
    /// claim, a sweep batch's publish) goes back through the other mutating methods. Side
    /// effects (deletions of published rows, the feed, the write admission, what to log) pile up
    /// in ``takeEffects()``, applied by the loop after each call.
    ///
    /// The rules:
    /// - Committed rows go out in batches of `batchSize`, up to `maxInFlight` at once, without
    ///   waiting for each other's confirms. A confirmed batch is deleted.
    /// - A sweep of the table begins only with nothing in flight: at start, when idle, and at
    ///   least every `sweepInterval`, for rows nobody claimed or whose claim went stale
    ///   (``Sweep/others``). It claims `batchSize` rows at a time in order, each claim after
    ///   the last row of the one before (so rows in flight are never claimed again), and its
    ///   batches are pipelined like committed ones, up to `maxInFlight`: a backlog of tens of
    ///   thousands of rows goes out at the broker's rate, not one confirm round trip per claim.
    /// - After a failed publish (the batches in flight end first), or when more committed rows
    ///   wait than `feedLimit`, the relay stops taking rows in memory (the feed closes) and
    ///   sweeps its own rows too, in order (``Sweep/all``), after a back-off for a failure; the
    ///   feed opens again for the last claims, and committed rows the sweep already published
    ///   are dropped.
    /// - Commands wait at the admission gate while more than `admissionHigh` rows wait in memory
    ///   or in flight, until `admissionLow` do; during a sweep or a failure the gate is open.
    /// - Once stopping, it keeps going for at most `flushTimeout`, and finishes as soon as
    ///   nothing waits and nothing is in flight.
    struct StateMachine {
        enum Sweep: Equatable { case none, others, all }

        enum Decision {
            /// Publish a batch of committed rows without waiting for it: its outcome comes back
            /// through ``settled(_:error:)``.
            case publish([Row])
            /// Claim up to `limit` rows of the table after row `after` for a sweep (every row
            /// this relay claimed too with `includeOwn`), then call ``claimed(_:now:)`` or
            /// ``claimFailed()``.
            case claim(limit: Int, includeOwn: Bool, after: Int64)
            /// Wait for the bell (a commit, or a pipelined batch's outcome), at most this long.
            case wait(Duration)
            /// Sleep between half and all of this, whatever rings (after a failed publish).
            case backOff(Duration)
            /// Stop.
            case finish
        }

        enum Effect {
            /// The broker took these rows: delete them and count them.
            case published([Row])
            /// Open or close the feed of committed rows.
            case feed(open: Bool)
            /// Open or close the write admission gate.
            case admission(open: Bool)
            /// A publish failed (`attempt` in a row).
            case publishFailed(any Error, rows: Int, attempt: Int)
            /// Publishing works again after failures.
            case publishingAgain(rows: Int)
        }

        let batchSize: Int
        let maxInFlight: Int
        let feedLimit: Int
        let admissionHigh: Int
        let admissionLow: Int
        let flushTimeout: Duration
        let sweepInterval: Duration
        private(set) var sweep = Sweep.others
        /// Whether the current sweep has claimed (it began with nothing in flight); its batches
        /// may be in flight then.
        private var sweepBegun = false
        /// The last row the current sweep claimed: the next claim starts after it.
        private var claimedUpTo: Int64 = 0
        /// Failed publishes in a row.
        private(set) var failures = 0
        /// Batches published and not yet settled, and their rows.
        private(set) var inFlight = 0
        private var inFlightRows = 0
        /// Committed rows not yet published, in commit order.
        private(set) var committed: [Row] = []
        /// The first failure among the batches in flight, not dealt with yet.
        private var failure: (any Error)?
        private var stopping = false
        private var flushDeadline: ContinuousClock.Instant?
        /// When the last sweep ended.
        private var swept: ContinuousClock.Instant
        /// Rows the last claim returned (a short one: the sweep is near its end).
        private var lastClaim = 0
        /// Whether the feed was open when the pending claim was asked for.
        private var claimFeedWasOpen = true
        /// A sweep of every row found nothing more: the next turn ends it.
        private var endingSweepOfAll = false
        /// The last turn waited with nothing in flight: if nothing came, the relay is idle.
        private var waited = false
        private var admissionOpen = true
        private var effects: [Effect] = []

        init(batchSize: Int, maxInFlight: Int, feedLimit: Int, admissionHigh: Int, admissionLow: Int,
             flushTimeout: Duration, sweepInterval: Duration = .seconds(5), now: ContinuousClock.Instant) {
            self.batchSize = max(1, batchSize)
            self.maxInFlight = max(1, maxInFlight)
            self.feedLimit = feedLimit
            self.admissionHigh = admissionHigh
            self.admissionLow = min(admissionLow, admissionHigh)
            self.flushTimeout = flushTimeout
            self.sweepInterval = sweepInterval
            swept = now
        }

        /// Returns and forgets the effects decided so far, in order.
        mutating func takeEffects() -> [Effect] {
            defer { effects.removeAll(keepingCapacity: true) }
            return effects
        }

        /// Graceful shutdown began.
        mutating func stop() { stopping = true }

        /// A pipelined batch's outcome.
        mutating func settled(_ batch: [Row], error: (any Error)?) {
            inFlight -= 1
            inFlightRows -= batch.count
            if let error {
                if failure == nil { failure = error }
            } else {
                published(batch)
            }
        }

        /// One turn: `taken` is what the feed handed over since the last one (and whether it
        /// overflowed), `feedOpen` whether it is open now.
        mutating func next(taken: (rows: [Row], overflowed: Bool), feedOpen: Bool,
                           now: ContinuousClock.Instant) -> Decision {
            if stopping, flushDeadline == nil { flushDeadline = now + flushTimeout }
            if let deadline = flushDeadline, now >= deadline { return .finish }
            if endingSweepOfAll {
                // Every row committed before the last claim was fed already: those up to
                // `claimedUpTo` went out with the sweep (its last pass claimed every row from
                // the first).
                endingSweepOfAll = false
                committed.removeAll { $0.0 <= claimedUpTo }
                if !take(taken.rows.filter { $0.0 > claimedUpTo }, overflowed: taken.overflowed) { endSweep(now) }
            } else if failure == nil {
                let came = !taken.rows.isEmpty || taken.overflowed
                _ = take(taken.rows, overflowed: taken.overflowed)
                // Idle, or `sweepInterval` since the last sweep: a sweep for rows others left.
                if sweep == .none, (waited && !came) || now - swept >= sweepInterval { sweep = .others }
            } else {
                // A failure is dealt with below, by a sweep of every row: those are in the table.
                _ = take(taken.rows, overflowed: taken.overflowed)
            }
            waited = false
            admit(lag: sweep == .none && failure == nil ? committed.count + inFlightRows : nil)
            // The batches in flight end first (confirmed, or failed too) before the relay deals
            // with a failure or begins a sweep (both go by the table); none goes beyond the cap.
            if inFlight > 0, failure != nil || (sweep != .none && (!sweepBegun || inFlight >= maxInFlight))
                || (!committed.isEmpty && inFlight >= maxInFlight) {
                return .wait(.seconds(1))
            }
            if let error = failure {
                failure = nil
                return failed(error, rows: committed.count)
            }
            if sweep != .none {
                // While the relay sweeps its own rows, new ones stay in the table; the feed opens
                // again for the last claims, so none committed meanwhile is missed.
                claimFeedWasOpen = true
                if sweep == .all {
                    claimFeedWasOpen = feedOpen
                    if !feedOpen, lastClaim < batchSize { effects.append(.feed(open: true)) }
                }
                if !sweepBegun {
                    sweepBegun = true
                    claimedUpTo = 0
                }
                return .claim(limit: batchSize, includeOwn: sweep == .all, after: claimedUpTo)
            }
            if !committed.isEmpty {
                let batch = Array(committed.prefix(batchSize))
                committed.removeFirst(batch.count)
                inFlight += 1
                inFlightRows += batch.count
                return .publish(batch)
            }
            if flushDeadline != nil, inFlight == 0 { return .finish }
            waited = inFlight == 0
            return .wait(.seconds(1))
        }

        /// The rows a sweep's claim returned, at `now`: a batch to publish without waiting for
        /// it (its outcome comes back through ``settled(_:error:)``); `nil`: take the next turn.
        mutating func claimed(_ batch: [Row], now: ContinuousClock.Instant) -> Decision? {
            lastClaim = batch.count
            guard let last = batch.last else {
                // Rows committed while the feed was closed are only in the table: claim again.
                if !claimFeedWasOpen { return nil }
                if sweep == .all {
                    endingSweepOfAll = true
                } else {
                    endSweep(now)
                }
                return nil
            }
            claimedUpTo = max(claimedUpTo, last.0)
            inFlight += 1
            inFlightRows += batch.count
            return .publish(batch)
        }

        /// The claim failed (the database is unavailable): wait, and claim again.
        mutating func claimFailed() -> Decision { .wait(.seconds(1)) }

        private mutating func endSweep(_ now: ContinuousClock.Instant) {
            sweep = .none
            sweepBegun = false
            swept = now
        }

        /// Adds committed rows; past `feedLimit` (or when the feed overflowed) they are dropped
        /// from memory and the relay sweeps every row it claimed. Returns whether it overflowed.
        private mutating func take(_ rows: [Row], overflowed: Bool) -> Bool {
            committed.append(contentsOf: rows)
            guard overflowed || committed.count > feedLimit else { return false }
            // They are in the table, claimed by this relay.
            committed.removeAll()
            enterSweepOfAll()
            return true
        }

        /// Every row not confirmed is in the table, claimed by this relay: the sweep of all
        /// publishes them in order, after a back-off that doubles per failure (0.2 s to 2 s).
        private mutating func failed(_ error: any Error, rows: Int) -> Decision {
            failures += 1
            committed.removeAll()
            enterSweepOfAll()
            effects.append(.publishFailed(error, rows: rows, attempt: failures))
            let seconds = min(2.0, 0.1 * Double(1 << min(failures, 8)))
            return .backOff(.milliseconds(Int64(seconds * 1000)))
        }

        private mutating func enterSweepOfAll() {
            effects.append(.feed(open: false))
            sweep = .all
            sweepBegun = false
            lastClaim = batchSize
        }

        private mutating func published(_ batch: [Row]) {
            effects.append(.published(batch))
            if failures > 0 { effects.append(.publishingAgain(rows: batch.count)) }
            failures = 0
        }

        /// `nil`: no lag counts (a sweep, or a failure being dealt with): the gate opens.
        private mutating func admit(lag: Int?) {
            let open: Bool
            if let lag {
                if lag >= admissionHigh {
                    open = false
                } else if lag <= admissionLow {
                    open = true
                } else {
                    return
                }
            } else {
                open = true
            }
            guard open != admissionOpen else { return }
            admissionOpen = open
            effects.append(.admission(open: open))
        }
    }
}
