import Foundation
@testable import D2LVerify

/// Replays a recorded transcript as a guest console, and answers typed input through a script.
final class FakeGuest: GuestConsole, @unchecked Sendable {
    let output: AsyncThrowingStream<[UInt8], any Error>
    private let continuation: AsyncThrowingStream<[UInt8], any Error>.Continuation
    private let lock = NSLock()
    private var _sent = ""
    private var _destroyed = false
    private let respond: @Sendable (String) -> (reply: String, close: Bool)?
    private var replay: Task<Void, Never>?

    init(
        transcript: [UInt8], chunkSize: Int, delay: Duration, closeAtEnd: Bool,
        respond: @escaping @Sendable (String) -> (reply: String, close: Bool)?
    ) {
        (output, continuation) = AsyncThrowingStream.makeStream(of: [UInt8].self)
        self.respond = respond
        let continuation = continuation
        replay = Task {
            var offset = 0
            while offset < transcript.count, !Task.isCancelled {
                let end = min(offset + chunkSize, transcript.count)
                continuation.yield(Array(transcript[offset..<end]))
                offset = end
                try? await Task.sleep(for: delay)
            }
            if closeAtEnd { continuation.finish() }
        }
    }

    var sent: String { lock.withLock { _sent } }
    var destroyed: Bool { lock.withLock { _destroyed } }

    func send(_ bytes: [UInt8]) throws {
        let text = String(decoding: bytes, as: UTF8.self)
        lock.withLock { _sent += text }
        if let (reply, close) = respond(text) {
            continuation.yield(Array(reply.utf8))
            if close { continuation.finish() }
        }
    }

    func destroy() {
        lock.withLock { _destroyed = true }
        replay?.cancel()
        continuation.finish()
    }
}

/// A hypervisor whose machines replay a transcript.
final class FakeHypervisor: Hypervisor, @unchecked Sendable {
    let transcript: [UInt8]
    let chunkSize: Int
    let delay: Duration
    let closeAtEnd: Bool
    let respond: @Sendable (String) -> (reply: String, close: Bool)?
    private let lock = NSLock()
    private var _guests: [FakeGuest] = []

    init(
        transcript: [UInt8], chunkSize: Int = 512, delay: Duration = .milliseconds(1), closeAtEnd: Bool = false,
        respond: @escaping @Sendable (String) -> (reply: String, close: Bool)? = { _ in nil }
    ) {
        self.transcript = transcript
        self.chunkSize = chunkSize
        self.delay = delay
        self.closeAtEnd = closeAtEnd
        self.respond = respond
    }

    var guests: [FakeGuest] { lock.withLock { _guests } }

    func powerOn(_ machine: MachineSpec) async throws -> any GuestConsole {
        let guest = FakeGuest(
            transcript: transcript, chunkSize: chunkSize, delay: delay, closeAtEnd: closeAtEnd, respond: respond)
        lock.withLock { _guests.append(guest) }
        return guest
    }
}

enum Transcripts {
    static func load(_ name: String) throws -> [UInt8] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Transcripts").appendingPathComponent(name)
        return [UInt8](try Data(contentsOf: url))
    }
}
