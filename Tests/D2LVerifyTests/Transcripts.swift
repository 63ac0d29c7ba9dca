import Foundation
@testable import D2LVerify

/// Recorded console transcripts under Transcripts/.
enum Transcripts {
    static func load(_ name: String) throws -> [UInt8] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Transcripts").appendingPathComponent(name)
        return [UInt8](try Data(contentsOf: url))
    }

    /// A hypervisor replaying `bytes` in 512-byte chunks 1 ms apart on its own clock.
    static func hypervisor(
        _ bytes: [UInt8], closeAtEnd: Bool = false, respond: ReplayHypervisor.Responder? = nil
    ) -> ReplayHypervisor {
        ReplayHypervisor(transcript: TimedTranscript(bytes: bytes), closeAtEnd: closeAtEnd, respond: respond)
    }
}
