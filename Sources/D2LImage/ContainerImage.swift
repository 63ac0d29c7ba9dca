import D2LSupport
import Foundation

/// The kinds of input the builder reads, recognised by content.
public enum ImageFormat: String, Sendable, Codable {
    case dockerArchive = "docker-archive"
    case ociLayout = "oci-layout"
    case ociArchive = "oci-archive"
    case rootfsTar = "rootfs-tar"
    case directory
}

/// A file the builder adds on top of the image (fstab, hostname, ...).
public struct SyntheticFile: Sendable {
    public enum Content: Sendable {
        case file([UInt8])
        case directory
        case symlink([UInt8])
        /// `.wh.` semantics: removes whatever the image has at the path.
        case whiteout
    }
    public var path: ImagePath
    public var content: Content
    public var metadata: EntryMetadata

    public init(path: String, content: Content, permissions: UInt16 = 0o644, mtime: Int64 = 0) {
        self.path = ImagePath(path)
        self.content = content
        self.metadata = EntryMetadata(permissions: permissions, mtime: mtime)
    }
}

/// One layer of an image, which can be opened as many times as needed.
public struct LayerSource: Sendable {
    public enum Location: Sendable {
        case file(String)
        case range(String, offset: Int64, length: Int64)
        case directory(String)
        case synthetic([SyntheticFile])
    }
    public var location: Location
    /// Expected SHA-256 (hex) of the layer's raw bytes, checked when the layer is read in full.
    public var expectedDigest: String?
    /// Whether `.wh.` entries are whiteouts (image layers) or plain files (a rootfs tar or directory).
    public var hasWhiteouts: Bool
    public var size: Int64
    public var description: String

    public init(
        location: Location, expectedDigest: String? = nil, hasWhiteouts: Bool, size: Int64, description: String
    ) {
        self.location = location
        self.expectedDigest = expectedDigest
        self.hasWhiteouts = hasWhiteouts
        self.size = size
        self.description = description
    }

    /// Opens the layer (its digest is checked apart, by LayerDigests); `headersOnly` reads in small
    /// pieces, for a caller that skips most data.
    ///
    /// - Throws: `ImageError.archive` when the layer cannot be opened or is not a tar libarchive reads.
    public func open(headersOnly: Bool = false) throws -> EntryStream {
        let chunk = headersOnly ? 64 << 10 : 1 << 20
        switch location {
        case .file(let path):
            let source = try ByteSource(
                path: path, allowSeek: true, bufferSize: chunk)
            return try ArchiveStream(source: source, description: description)
        case .range(let path, let offset, let length):
            let source = try ByteSource(
                path: path, start: offset, length: length, allowSeek: true, bufferSize: chunk)
            return try ArchiveStream(source: source, description: description)
        case .directory(let path):
            return try ArchiveStream(directory: path)
        case .synthetic(let files):
            return SyntheticStream(files: files)
        }
    }
}

/// A sequence of layer entries with their data.
public protocol EntryStream: AnyObject {
    func next() throws -> LayerEntry?
    func readData(_ body: (UnsafeRawBufferPointer, Int64) throws -> Void) throws
    func readAll(limit: Int) throws -> [UInt8]
    /// Ends the stream.
    func finish() throws
    var skippedNames: [String] { get }
}

extension ArchiveStream: EntryStream {}

final class SyntheticStream: EntryStream {
    private let files: [SyntheticFile]
    private var index = -1
    let skippedNames: [String] = []

    init(files: [SyntheticFile]) { self.files = files }

    func next() throws -> LayerEntry? {
        index += 1
        guard index < files.count else { return nil }
        let f = files[index]
        switch f.content {
        case .file(let bytes):
            return LayerEntry(path: f.path, kind: .regular(size: UInt64(bytes.count)), metadata: f.metadata)
        case .directory:
            return LayerEntry(path: f.path, kind: .directory, metadata: f.metadata)
        case .symlink(let target):
            return LayerEntry(path: f.path, kind: .symlink(target: target), metadata: f.metadata)
        case .whiteout:
            let (parent, name) = f.path.splitParent
            let wh = (parent.isEmpty ? [] : parent + [UInt8(ascii: "/")]) + Array(".wh.".utf8) + name
            return LayerEntry(path: wh, kind: .regular(size: 0), metadata: f.metadata)
        }
    }

    func readData(_ body: (UnsafeRawBufferPointer, Int64) throws -> Void) throws {
        guard index < files.count, case .file(let bytes) = files[index].content, !bytes.isEmpty else { return }
        try bytes.withUnsafeBytes { try body($0, 0) }
    }

    func readAll(limit: Int) throws -> [UInt8] {
        guard index < files.count, case .file(let bytes) = files[index].content else { return [] }
        return Array(bytes.prefix(limit))
    }

    func finish() throws {}
}

/// A container image as the builder sees it: layers bottom first, and its config.
public struct ContainerImage: Sendable {
    public var format: ImageFormat
    public var path: String
    public var layers: [LayerSource]
    public var architecture: String?
    public var os: String?
    /// Content digest of the input (config or manifest digest, or of the bytes), when known up front.
    public var digest: String?
    /// Repository tags from the archive (informational).
    public var tags: [String] = []
    /// What the image config says to run (Entrypoint, Cmd, Env, ...); nil for a root file system
    /// tar or directory, which carry no config.
    public var config: ContainerConfig?
    /// Files made to read this image (an engine's saved archive), removed by `removeOwnedFiles`.
    public var ownedFiles: [String] = []

    /// Deletes the files made to read this image; call when done with it.
    public func removeOwnedFiles() {
        for file in ownedFiles {
            try? FileManager.default.removeItem(atPath: file)
            Cleanup.shared.remove(file)
        }
    }
}
