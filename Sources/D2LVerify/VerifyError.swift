import D2LSupport

/// Why `d2l verify` could not test a disk (exit status 125), as opposed to a boot that failed.
public enum VerifyError: Error, CustomStringConvertible, Sendable, CategorizedError {
    case missingImage(path: String)
    case unreadableImage(path: String, reason: String)
    case badOption(String)
    /// The hypervisor failed us; `underlying` is its own error when there is one.
    case hypervisor(String, underlying: (any Error & Sendable)? = nil)
    /// `--kernel` (or a kernel in a bisection) is neither an x86 bzImage nor an arm64 Image.
    case notAKernel(path: String, reason: String)

    public var description: String {
        switch self {
        case .missingImage(let path):
            return "\(path): no such file: pass the disk image that d2l build wrote"
        case .unreadableImage(let path, let reason):
            return "\(path): \(reason)"
        case .badOption(let text):
            return text
        case .hypervisor(let text, _):
            return text
        case .notAKernel(let path, let reason):
            return "\(path): \(reason): pass an x86 bzImage (arch/x86/boot/bzImage) or an arm64 Image (arch/arm64/boot/Image[.gz]), or a /boot/vmlinuz-*"
        }
    }

    public var category: ErrorCategory {
        if case .badOption = self { return .usage }
        return .couldNotTest
    }

    public var cause: (any Error)? {
        if case .hypervisor(_, let underlying) = self { return underlying }
        return nil
    }
}
