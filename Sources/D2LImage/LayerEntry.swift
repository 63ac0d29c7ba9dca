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
    /// For a sparse regular file (a GNU or pax sparse entry, tar(5); a sparse file in a directory
    /// input): the byte ranges that hold data, sorted and disjoint, within the file's size. The rest
    /// of the file is holes, read as zeros. nil for a file stored whole.
    public var dataRegions: [Range<UInt64>]?

    public init(path: ImagePath, kind: EntryKind, metadata: EntryMetadata, dataRegions: [Range<UInt64>]? = nil) {
        self.path = path
        self.kind = kind
        self.metadata = metadata
        self.dataRegions = dataRegions
    }

    /// Sorts `regions`, drops empty ones, clips them to `size` and merges those that overlap or touch.
    public static func normaliseRegions(_ regions: [Range<UInt64>], size: UInt64) -> [Range<UInt64>] {
        var out: [Range<UInt64>] = []
        for region in regions.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            let clipped = region.clamped(to: 0..<size)
            guard !clipped.isEmpty else { continue }
            if let last = out.last, clipped.lowerBound <= last.upperBound {
                out[out.count - 1] = last.lowerBound..<max(last.upperBound, clipped.upperBound)
            } else {
                out.append(clipped)
            }
        }
        return out
    }

    /// Blocks of `blockSize` bytes a file of `size` bytes needs: those its data `regions` touch for a
    /// sparse file (holes take none), else every block of its size.
    public static func blocks(size: UInt64, regions: [Range<UInt64>]?, blockSize: UInt64) -> UInt64 {
        if let regions { return blocks(of: regions, blockSize: blockSize) }
        return (size + blockSize - 1) / blockSize
    }

    /// Blocks of `blockSize` bytes that `regions` (sorted, disjoint) touch: what a sparse file allocates.
    public static func blocks(of regions: [Range<UInt64>], blockSize: UInt64) -> UInt64 {
        var total: UInt64 = 0
        var lastBlock: UInt64?  // the last block counted, shared by two regions that meet inside it
        for region in regions {
            var first = region.lowerBound / blockSize
            let end = (region.upperBound + blockSize - 1) / blockSize
            if let lastBlock, first <= lastBlock { first = lastBlock + 1 }
            if end > first { total += end - first }
            lastBlock = end - 1
        }
        return total
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
