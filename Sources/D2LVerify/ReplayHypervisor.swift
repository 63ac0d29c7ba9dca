import Foundation
import Synchronization

/// A console transcript with the time each chunk arrived, as `script -t` records it.
public struct TimedTranscript: Sendable {
    public struct Chunk: Sendable {
        /// Time since power-on.
        public var at: Duration
        public var bytes: [UInt8]
    }
    public var chunks: [Chunk]

    public init(chunks: [Chunk]) { self.chunks = chunks }

    /// Splits `bytes` into chunks of `chunkSize` bytes, `interval` apart.
    public init(bytes: [UInt8], chunkSize: Int = 512, interval: Duration = .milliseconds(1)) {
        var chunks: [Chunk] = []
        var offset = 0
        var time = Duration.zero
        while offset < bytes.count {
            let end = min(offset + chunkSize, bytes.count)
            chunks.append(Chunk(at: time, bytes: Array(bytes[offset..<end])))
            offset = end
            time += interval
        }
        self.chunks = chunks
    }

    /// All the bytes, in order.
    public var bytes: [UInt8] { chunks.flatMap(\.bytes) }
}

/// A hypervisor whose machines replay a recorded transcript on a `ManualClock`: every machine it
/// powers on shows the same console, chunk by chunk at its recorded time, and answers typed input
/// through `respond` (tests script a guest with it; a replay of a real log ignores input).
public final class ReplayHypervisor: Hypervisor, Sendable {
    public let transcript: TimedTranscript
    public let clock = ManualClock()
    public let closeAtEnd: Bool
    public let tick: Duration
    /// Given what was typed, what the guest answers and whether it then stops.
    public typealias Responder = @Sendable (String) -> (reply: String, close: Bool)?
    let respond: Responder
    private let consoles = Mutex<[ReplayConsole]>([])

    public init(
        transcript: TimedTranscript, closeAtEnd: Bool = false, tick: Duration = .milliseconds(100),
        respond: @escaping Responder = { _ in nil }
    ) {
        self.transcript = transcript
        self.closeAtEnd = closeAtEnd
        self.tick = tick
        self.respond = respond
    }

    public var stopwatch: Stopwatch { Stopwatch(clock: clock) }

    /// The consoles of the machines powered on so far.
    public var guests: [ReplayConsole] { consoles.withLock { $0 } }

    /// - Throws: nothing: a replay always powers on.
    public func powerOn(_ machine: MachineSpec) async throws -> any GuestConsole {
        let console = ReplayConsole(hypervisor: self)
        consoles.withLock { $0.append(console) }
        return console
    }
}

/// One replayed console: pulls the next chunk when the reader asks, moving the clock to its time,
/// so the reader never falls behind the clock.
public final class ReplayConsole: GuestConsole, Sendable {
    private struct State {
        var next = 0
        var pending: [[UInt8]] = []
        var closeAfterPending = false
        var closed = false
        var sent = ""
        var destroyed = false
    }
    private let state = Mutex(State())
    private let hypervisor: ReplayHypervisor

    init(hypervisor: ReplayHypervisor) { self.hypervisor = hypervisor }

    /// Everything typed so far.
    public var sent: String { state.withLock { $0.sent } }
    public var destroyed: Bool { state.withLock { $0.destroyed } }

    public func next() async -> ConsoleEvent {
        await Task.yield()
        let clock = hypervisor.clock
        let chunks = hypervisor.transcript.chunks
        return state.withLock { state -> ConsoleEvent in
            if state.closed { return .closed(error: nil) }
            if !state.pending.isEmpty { return .bytes(state.pending.removeFirst()) }
            if state.closeAfterPending {
                state.closed = true
                return .closed(error: nil)
            }
            let now = clock.now
            if state.next < chunks.count {
                let chunk = chunks[state.next]
                if chunk.at <= now.offset + hypervisor.tick {
                    state.next += 1
                    clock.advance(to: ManualClock.Instant(offset: max(chunk.at, now.offset)))
                    return .bytes(chunk.bytes)
                }
            } else if hypervisor.closeAtEnd {
                state.closed = true
                return .closed(error: nil)
            }
            clock.advance(by: hypervisor.tick)
            return .tick
        }
    }

    /// - Throws: nothing: typed input goes to the responder.
    public func send(_ bytes: [UInt8]) throws {
        let text = String(decoding: bytes, as: UTF8.self)
        let answer = hypervisor.respond(text)
        state.withLock { state in
            state.sent += text
            if let (reply, close) = answer {
                if !reply.isEmpty { state.pending.append(Array(reply.utf8)) }
                if close { state.closeAfterPending = true }
            }
        }
    }

    public func destroy() {
        state.withLock {
            $0.destroyed = true
            $0.closed = true
        }
    }
}
