import D2LExt4
import D2LSupport

/// Why a disk could not be written.
public enum DiskError: Error, CustomStringConvertible, Sendable, CategorizedError {
    case io(String, message: String)
    case cannotBoot([String])
    case outputExists(String)
    case tooSmall(requested: UInt64, needed: UInt64)
    case tool(String)
    case badOption(String)
    /// Names longer than ext4's 255 bytes, by path.
    case nameTooLong([String])
    /// An extended attribute the disk cannot hold: on `path`, attribute `name` of `size` bytes, over
    /// `limit`; `reason` says which limit and what to do.
    case xattrTooLarge(path: String, name: String, size: Int, limit: Int, reason: String)
    /// libext2fs failed while writing the file at `path` (in the image).
    case ext4(path: String, Ext4Error)
    /// The output's file system has too little space: found before writing, or met while writing
    /// (then the partial disk is gone too).
    case noSpace(directory: String, available: UInt64, needed: UInt64?, input: String, whileWriting: Bool)

    public var description: String {
        switch self {
        case .io(let path, let message):
            return "\(path): \(message)"
        case .cannotBoot(let problems):
            return "the image cannot boot, no disk was written:\n"
                + problems.map { "  - " + $0 }.joined(separator: "\n")
        case .outputExists(let path):
            return "\(path) exists: pass --force to replace it"
        case .tooSmall(let requested, let needed):
            return "--size \(requested / (1 << 20)) MiB is too small: the content needs at least \(needed / (1 << 20)) MiB"
        case .tool(let message):
            return message
        case .badOption(let message):
            return message
        case .nameTooLong(let paths):
            return "ext4 names hold at most 255 bytes; the image has longer ones, shorten or remove them:\n"
                + paths.prefix(20).map { "  - " + $0 }.joined(separator: "\n")
                + (paths.count > 20 ? "\n  (and \(paths.count - 20) more)" : "")
        case .xattrTooLarge(let path, let name, let size, let limit, let reason):
            return "\(path): extended attribute \(name) takes \(size) bytes, over the limit of \(limit) bytes: "
                + reason
        case .ext4(let path, let error):
            return "\(path): \(error)"
        case .noSpace(let directory, let available, let needed, let input, let whileWriting):
            let mib = { (bytes: UInt64) in "\((bytes + (1 << 20) - 1) >> 20) MiB" }
            let need = needed.map { ", the disk of \(input) needs about \(mib($0))" } ?? ""
            return whileWriting
                ? "the output's file system (\(directory)) is full (\(mib(available)) free\(need)): "
                    + "no disk was written and nothing of it is left; free some space or write the disk elsewhere"
                : "the output's file system (\(directory)) has \(mib(available)) free\(need): "
                    + "nothing was written; free some space or write the disk elsewhere"
        }
    }

    /// An image that cannot boot, an existing output and bad sizes are the user's to fix.
    public var category: ErrorCategory {
        switch self {
        case .cannotBoot, .outputExists, .tooSmall, .badOption, .nameTooLong, .xattrTooLarge: return .usage
        case .io, .tool, .noSpace: return .failed
        // As the libext2fs error it wraps was before it named the path.
        case .ext4(_, let error): return error.errorCategory
        }
    }

    /// The libext2fs error a `.ext4` failure wraps.
    public var cause: (any Error)? {
        if case .ext4(_, let error) = self { return error }
        return nil
    }
}
