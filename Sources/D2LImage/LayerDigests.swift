import D2LSupport
import Dispatch
import Foundation
import Synchronization

/// Checks the layers' blob digests on a second core while the first one writes.
///
/// Reading a blob twice from the page cache costs less than hashing it inline:
/// SHA-256 at ~1.4 GB/s would otherwise add half a second to a Debian build.
public final class LayerDigests: Sendable {
    private let group = DispatchGroup()
    private let failure = Mutex<(any Error)?>(nil)

    /// Starts hashing every layer that has an expected digest.
    public init(_ layers: [LayerSource]) {
        let checked = layers.filter { $0.expectedDigest != nil }
        guard !checked.isEmpty else { return }
        group.enter()
        DispatchQueue.global(qos: .userInitiated).async { [self] in
            defer { group.leave() }
            for layer in checked {
                do {
                    try Self.check(layer)
                } catch {
                    failure.withLock { $0 = error }
                    return
                }
            }
        }
    }

    /// Waits for the hashing; throws the first mismatch.
    public func wait() throws {
        group.wait()
        if let failure = failure.withLock({ $0 }) { throw failure }
    }

    static func check(_ layer: LayerSource) throws {
        guard let expected = layer.expectedDigest else { return }
        let (path, start, length): (String, Int64, Int64?)
        switch layer.location {
        case .file(let p): (path, start, length) = (p, 0, nil)
        case .range(let p, let offset, let len): (path, start, length) = (p, offset, len)
        default: return
        }
        let source = try ByteSource(path: path, start: start, length: length, hash: true, allowSeek: false)
        while source.read() > 0 {}
        let actual = source.hasher?.finalizeHex() ?? ""
        guard actual == expected else {
            throw ImageError.digestMismatch(path: layer.description, expected: expected, actual: actual)
        }
    }
}
