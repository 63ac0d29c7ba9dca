/// Why an image could not be read or would not boot.
import D2LSupport

public enum ImageError: Error, CustomStringConvertible, Sendable, CategorizedError {
    case notFound(String)
    case unrecognised(String, detail: String)
    case malformed(String, detail: String)
    case archive(String, message: String)
    case digestMismatch(path: String, expected: String, actual: String)
    /// The platform asked for, the image, and the platforms its index has.
    case platformNotFound(String, image: String, available: [String])
    /// A single image (not an index) whose config names another platform than `--platform` asked for.
    case platformMismatch(wanted: String, image: String, found: String)
    case engine(String)
    case compressedImageArchive(String)
    /// A layer entry whose parent directories go through more symlinks than a lookup may follow
    /// (a loop such as `a -> b`, `b -> a`); `layer` names the layer when known.
    case symlinkLoop(path: String, layer: String)
    /// A regular file whose data (`bytes`, in whole 4 KiB blocks) alone is more than the `limit` bytes
    /// the output can hold, found at its header (`LayerFlattener.dataLimit`).
    case fileLargerThanOutput(path: String, layer: String, bytes: UInt64, limit: UInt64)

    public var description: String {
        switch self {
        case .notFound(let path):
            return "\(path): no such file or directory"
        case .unrecognised(let path, let detail):
            return "\(path): not a container image (\(detail)); give a docker-archive (docker save), "
                + "an OCI layout or archive, a root file system tar (docker export) or a directory"
        case .malformed(let path, let detail):
            return "\(path): malformed image: \(detail)"
        case .archive(let what, let message):
            return "\(what): \(message)"
        case .digestMismatch(let path, let expected, let actual):
            return "\(path): blob digest mismatch: expected sha256:\(expected), got sha256:\(actual); "
                + "the image is corrupt or was modified, save it again"
        case .platformNotFound(let wanted, let image, let available):
            return "\(image): the image index has no \(wanted) image (it has: \(available.joined(separator: ", "))); "
                + "choose one with --platform"
        case .platformMismatch(let wanted, let image, let found):
            return "\(image): a \(found) image, not the \(wanted) asked for with --platform "
                + "(without --platform it is built as \(found))"
        case .engine(let message):
            return message
        case .compressedImageArchive(let path):
            return "\(path): a compressed image archive; decompress it first (gunzip, zstd -d or xz -d)"
        case .fileLargerThanOutput(let path, let layer, let bytes, let limit):
            return "\(layer): \(path) holds \((bytes + (1 << 20) - 1) >> 20) MiB of data, more than the "
                + "\(limit >> 20) MiB the output can hold"
        case .symlinkLoop(let path, let layer):
            return (layer.isEmpty ? "" : "\(layer): ") + "\(path): its directories go through a symlink loop "
                + "(more than \(FileTree.maximumSymlinkHops) symlinks); the image is broken: fix the symlinks in it"
        }
    }

    /// A missing or unusable input is the user's to fix; an engine that fails is not.
    public var category: ErrorCategory {
        switch self {
        case .engine: return .couldNotTest
        default: return .usage
        }
    }
}
