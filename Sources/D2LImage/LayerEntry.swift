import D2LSupport

/// A path inside an image, as raw bytes: names need not be UTF-8.
public typealias ImagePath = [UInt8]

extension ImagePath {
    /// The path for messages (invalid UTF-8 shown with replacement characters).
    public var display: String { "/" + String(decoding: self, as: UTF8.self) }
    public init(_ string: String) { self = Array(string.utf8) }
}

/// Owner, permissions, time and extended attributes of a file in a layer.
public typealias EntryMetadata = FileMetadata

/// What kind of file an entry is.
public enum EntryKind: Sendable, Equatable {
    case regular(size: UInt64)
    case directory
    case symlink(target: [UInt8])
    /// A hard link to an earlier entry's path (in this layer or below).
    case hardlink(target: ImagePath)
    case characterDevice(major: UInt32, minor: UInt32)
    case blockDevice(major: UInt32, minor: UInt32)
    case fifo
    case socket
}

/// One header of a layer stream: a path, its kind and its metadata.
public struct LayerEntry: Sendable, Equatable {
    /// Normalised: no leading "/" or "./", no trailing "/", "" for the root.
    public var path: ImagePath
    public var kind: EntryKind
    public var metadata: EntryMetadata

    public init(path: ImagePath, kind: EntryKind, metadata: EntryMetadata) {
        self.path = path
        self.kind = kind
        self.metadata = metadata
    }

    /// Makes a path canonical; nil when it escapes the root ("..") .
    public static func normalise(_ raw: [UInt8]) -> ImagePath? {
        var parts: [ArraySlice<UInt8>] = []
        for part in raw.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
            if part.count == 1 && part.first == UInt8(ascii: ".") { continue }
            if part.count == 2 && part.allSatisfy({ $0 == UInt8(ascii: ".") }) { return nil }
            parts.append(part)
        }
        return Array(parts.joined(separator: [UInt8(ascii: "/")]))
    }
}

extension Array where Element == UInt8 {
    /// Parent directory and last component of a normalised path.
    public var splitParent: (parent: ImagePath, name: ImagePath) {
        if let slash = lastIndex(of: UInt8(ascii: "/")) {
            return (Array(self[..<slash]), Array(self[(slash + 1)...]))
        }
        return ([], self)
    }
}
