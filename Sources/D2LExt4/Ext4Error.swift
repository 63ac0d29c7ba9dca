import CExt2fs
import D2LSupport

/// Why an ext4 file system could not be read or written.
public enum Ext4Error: Error, CustomStringConvertible, Sendable {
    /// libext2fs returned `code` for `operation`; `message` is its own text (`error_message`).
    case library(operation: String, code: Int, message: String)
    /// A read or write of the disk file itself failed.
    case io(path: String, reason: String)

    public var description: String {
        switch self {
        case .library(let operation, let code, let message):
            return "ext4: \(operation) failed: \(message) (libext2fs error \(code))"
        case .io(let path, let reason):
            return "\(path): \(reason)"
        }
    }

    /// Throws `.library` with libext2fs's own message when `code` is not 0.
    static func check(_ code: errcode_t, _ operation: @autoclosure () -> String) throws(Ext4Error) {
        guard code != 0 else { return }
        let message = error_message(code).map { String(cString: $0) } ?? "unknown error"
        throw .library(operation: operation(), code: Int(code), message: message)
    }
}

/// Inodes that are neither files, directories nor symlinks.
public enum SpecialFileKind: Sendable, Equatable {
    case characterDevice(major: UInt32, minor: UInt32)
    case blockDevice(major: UInt32, minor: UInt32)
    case fifo
    case socket
}
