import Foundation

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

