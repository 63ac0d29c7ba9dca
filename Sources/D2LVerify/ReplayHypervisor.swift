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

    /// The console's speed when nothing better tells the time: 115200 baud, 8N1.
    static let bytesPerSecond = 11_520.0

    /// Reads a transcript and its time: from `PATH.timing` (scriptreplay(1)'s classic format, which
    /// `d2l verify --transcript` writes) when it is there; otherwise estimated from the bytes, taking
    /// the printk timestamps of kernel messages as the time since the kernel started and the console's
    /// speed (115200 baud) for everything between them.
    ///
    /// - Throws: `VerifyError.unreadableImage` when the transcript cannot be read.
    public static func load(path: String) throws(VerifyError) -> TimedTranscript {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .unreadableImage(path: path, reason: "cannot read the transcript")
        }
        let bytes = [UInt8](data)
        if let timing = FileManager.default.contents(atPath: path + ".timing"),
            let timed = TimedTranscript(bytes: bytes, timing: String(decoding: timing, as: UTF8.self))
        {
            return timed
        }
        return TimedTranscript(estimating: bytes)
    }

    /// Chunks from a scriptreplay timing file; nil when it does not describe `bytes`.
    init?(bytes: [UInt8], timing: String) {
        var chunks: [Chunk] = []
        var offset = 0
        var time = 0.0
        for line in timing.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count == 2, let delay = Double(fields[0]), let count = Int(fields[1]), count >= 0,
                offset + count <= bytes.count
            else { return nil }
            time += max(0, delay)
            chunks.append(Chunk(at: .milliseconds(Int64(time * 1000)), bytes: Array(bytes[offset..<offset + count])))
            offset += count
        }
        guard offset == bytes.count else { return nil }
        self.chunks = chunks
    }

    /// Chunks of a line each, timed by printk timestamps where the kernel gives them and by the
    /// console's speed elsewhere.
    init(estimating bytes: [UInt8]) {
        var chunks: [Chunk] = []
        var time = 0.0
        var kernelOffset: Double?
        var start = 0
        var text = ConsoleText()
        for index in bytes.indices where bytes[index] == 0x0A || index == bytes.count - 1 {
            let piece = Array(bytes[start...index])
            time += Double(piece.count) / Self.bytesPerSecond
            if let stamp = text.append(piece).compactMap(\.kernelTime).last {
                // The kernel's clock starts after the firmware and bootloader: line it up once.
                let offset = kernelOffset ?? max(0, time - stamp)
                kernelOffset = offset
                time = max(time, stamp + offset)
            }
            chunks.append(Chunk(at: .milliseconds(Int64(time * 1000)), bytes: piece))
            start = index + 1
        }
        self.chunks = chunks
    }
}

/// A hypervisor whose machines replay a recorded transcript on a `ManualClock`: every machine it
/// powers on shows the same console, chunk by chunk at its recorded time, and answers typed input
/// through `respond` (tests script a guest with it; a replay of a real log ignores input).
public final class ReplayHypervisor: Hypervisor, Sendable {
    public let transcript: TimedTranscript
    public let clock = ManualClock()
    /// Whether the console ends after the transcript (else it stays open, silent, until destroyed).
    public let closeAtEnd: Bool
    /// How long after its last chunk a closing transcript ends.
    public let endDelay: Duration
    public let tick: Duration
    /// Given what was typed, what the guest answers and whether it then stops.
    public typealias Responder = @Sendable (String) -> (reply: String, close: Bool)?
    let respond: Responder?
    private let consoles = Mutex<[ReplayConsole]>([])

    /// `respond`, when given, answers what the verifier types; without it the replay shows the
    /// recorded console whatever is typed.
    public init(
        transcript: TimedTranscript, closeAtEnd: Bool = false, endDelay: Duration = .zero,
        tick: Duration = .milliseconds(100), respond: Responder? = nil
    ) {
        self.transcript = transcript
        self.closeAtEnd = closeAtEnd
        self.endDelay = endDelay
        self.tick = tick
        self.respond = respond
    }

    public var stopwatch: Stopwatch { Stopwatch(clock: clock) }
    public var answersInput: Bool { respond != nil }

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
            } else if hypervisor.closeAtEnd, now.offset >= (chunks.last?.at ?? .zero) + hypervisor.endDelay {
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
        let answer = hypervisor.respond?(text)
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
