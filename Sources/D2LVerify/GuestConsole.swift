import D2LSupport
import Foundation
import Synchronization

/// What happens next on a guest's serial console.
public enum ConsoleEvent: Sendable {
    /// Bytes from the guest.
    case bytes([UInt8])
    /// Nothing came for a tick of the clock: time to check the deadlines.
    case tick
    /// The console ended (the guest stopped, or the stream failed with `error`); after it, only
    /// `.closed` again.
    case closed(error: (any Error)?)
}

/// A running guest's serial console.
public protocol GuestConsole: AnyObject, Sendable {
    /// The next event; waits for bytes, the end, or a tick of its clock. One reader at a time.
    func next() async -> ConsoleEvent
    /// Types bytes on the guest's serial port.
    func send(_ bytes: [UInt8]) throws
    /// Stops the guest at once and forgets it; safe to call more than once.
    func destroy()
}

/// Something that can power on a machine and hand over its console: libvirt, or a replay of a
/// recorded transcript.
public protocol Hypervisor: Sendable {
    /// Creates the machine paused, attaches the console, then powers it on.
    ///
    /// - Throws: the hypervisor's error (`LibvirtError`) when the machine cannot be created or started.
    func powerOn(_ machine: MachineSpec) async throws -> any GuestConsole
    /// The clock the console's times are measured on.
    var stopwatch: Stopwatch { get }
}

/// A live console as events: bytes as they arrive, merged with a tick every `tick` of wall-clock time.
final class LiveConsoleFeed: Sendable {
    private let events: AsyncStream<ConsoleEvent>
    private let producers: [Task<Void, Never>]
    nonisolated(unsafe) private var iterator: AsyncStream<ConsoleEvent>.Iterator
    private let ended = Mutex(false)

    init(output: AsyncThrowingStream<[UInt8], any Error>, tick: Duration = .milliseconds(100)) {
        let (stream, continuation) = AsyncStream.makeStream(of: ConsoleEvent.self)
        events = stream
        iterator = stream.makeAsyncIterator()
        producers = [
            Task {
                do {
                    for try await chunk in output { continuation.yield(.bytes(chunk)) }
                    continuation.yield(.closed(error: nil))
                } catch {
                    continuation.yield(.closed(error: error))
                }
            },
            Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: tick)
                    continuation.yield(.tick)
                }
            },
        ]
    }

    deinit { stop() }

    /// Called by the console's single reader.
    func next() async -> ConsoleEvent {
        if ended.withLock({ $0 }) { return .closed(error: nil) }
        guard let event = await iterator.next() else { return .closed(error: nil) }
        if case .closed = event { ended.withLock { $0 = true } }
        return event
    }

    func stop() { for task in producers { task.cancel() } }
}
