import D2LSupport

/// Why a disk could not be read or its table written.
public enum DiskModelError: Error, CustomStringConvertible, Sendable, CategorizedError {
    case unreadable(path: String, reason: String)
    case io(path: String, reason: String)
    /// A GPT whose header or entries fail their checks.
    case corruptTable(path: String, reason: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): return "\(path): \(reason)"
        case .io(let path, let reason): return "\(path): \(reason)"
        case .corruptTable(let path, let reason): return "\(path): corrupt partition table: \(reason)"
        }
    }

    public var category: ErrorCategory { .couldNotTest }
}
