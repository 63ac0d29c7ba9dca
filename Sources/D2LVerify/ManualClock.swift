import Synchronization

/// A clock whose time moves only when it is told to: the replay of a recorded transcript advances
/// it to each chunk's recorded time, so that deadlines are measured on the transcript's own time
/// and a replay takes no longer than the work it does.
public final class ManualClock: Clock, Sendable {
    public struct Instant: InstantProtocol, Sendable {
        /// Time since the clock started.
        public var offset: Duration
        public func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
        public func duration(to other: Instant) -> Duration { other.offset - offset }
        public static func < (a: Instant, b: Instant) -> Bool { a.offset < b.offset }
    }

    private struct State {
        var now = Instant(offset: .zero)
        var sleepers: [(deadline: Instant, continuation: CheckedContinuation<Void, any Error>)] = []
    }
    private let state = Mutex(State())

    public init() {}

    public var now: Instant { state.withLock { $0.now } }
    public var minimumResolution: Duration { .nanoseconds(1) }

    /// Suspends until `advance` moves the clock to `deadline` or beyond.
    ///
    /// - Throws: `CancellationError` when the task is cancelled first.
    public func sleep(until deadline: Instant, tolerance: Duration? = nil) async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let ready = state.withLock { state -> Bool in
                    if deadline <= state.now { return true }
                    state.sleepers.append((deadline, continuation))
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            let cancelled = state.withLock { state in
                let gone = state.sleepers.filter { $0.deadline == deadline }
                state.sleepers.removeAll { $0.deadline == deadline }
                return gone
            }
            for sleeper in cancelled { sleeper.continuation.resume(throwing: CancellationError()) }
        }
    }

    /// Moves the clock forward to `instant` (never back) and wakes the sleepers whose time came.
    public func advance(to instant: Instant) {
        let woken = state.withLock { state in
            if state.now < instant { state.now = instant }
            let due = state.sleepers.filter { $0.deadline <= state.now }
            state.sleepers.removeAll { $0.deadline <= state.now }
            return due
        }
        for sleeper in woken { sleeper.continuation.resume() }
    }

    /// Moves the clock forward by `duration`.
    public func advance(by duration: Duration) { advance(to: now.advanced(by: duration)) }
}

/// Time since a start on some clock: what the console session reads as "seconds since power-on".
public struct Stopwatch: Sendable {
    private let read: @Sendable () -> Duration

    /// Starts now on `clock`.
    public init<C: Clock>(clock: C) where C.Duration == Duration {
        let start = clock.now
        read = { start.duration(to: clock.now) }
    }

    public var elapsed: Duration { read() }
}
