import D2LSupport

/// Why a disk could not be written.
public enum DiskError: Error, CustomStringConvertible, Sendable, CategorizedError {
    case io(String, message: String)
    case cannotBoot([String])
    case outputExists(String)
    case tooSmall(requested: UInt64, needed: UInt64)
    case tool(String)
    case badOption(String)

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
        }
    }

    /// An image that cannot boot, an existing output and bad sizes are the user's to fix.
    public var category: ErrorCategory {
        switch self {
        case .cannotBoot, .outputExists, .tooSmall, .badOption: return .usage
        case .io, .tool: return .failed
        }
    }
}
