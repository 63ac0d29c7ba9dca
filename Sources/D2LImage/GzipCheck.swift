import D2LSupport
import Foundation

/// Checks the gzip layers that have no digest (a `docker export | gzip` root file system) with
/// `gzip -t`, on another core while the disk is written.
///
/// libarchive's gzip reader checks neither the CRC-32 nor the length in a member's trailer
/// (filter_gzip.c: "XXX TODO: Verify the length and CRC"), so damage inside stored deflate blocks
/// would reach the disk unnoticed; an image layer's blob digest catches it already.
public struct GzipCheck: Sendable {
    private let task: Task<(any Error)?, Never>?

    /// Starts checking every gzip-compressed layer file without an expected digest.
    public init(_ layers: [LayerSource]) {
        let files = layers.compactMap { layer -> (path: String, description: String)? in
            guard layer.expectedDigest == nil, case .file(let path) = layer.location, Self.isGzip(path) else { return nil }
            return (path, layer.description)
        }
        guard !files.isEmpty else {
            task = nil
            return
        }
        task = Task {
            for file in files {
                let result = await ProcessRunner.capture(["gzip", "-t", file.path])
                // 0: sound; 2: a warning (trailing zeros, as tar pads); 127: no gzip, nothing to say.
                guard result.status == 1 else { continue }
                // "gzip: PATH: invalid compressed data--crc error": the reason alone.
                var said = result.stderr.split(separator: "\n").first.map { String($0) } ?? "status 1"
                if let range = said.range(of: file.path + ": ") { said = String(said[range.upperBound...]) }
                return ImageError.archive(
                    file.description, message: "its gzip stream is cut short or damaged (gzip -t: \(said))")
            }
            return nil
        }
    }

    /// Waits for the check; throws `ImageError.archive` for a damaged stream.
    public func wait() async throws {
        if let error = await task?.value { throw error }
    }

    /// Stops the check (the build failed for another reason).
    public func cancel() { task?.cancel() }

    static func isGzip(_ path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        return (try? handle.read(upToCount: 2)) == Data([0x1F, 0x8B])
    }
}
