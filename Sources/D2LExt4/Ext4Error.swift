import CExt2fs
import D2LSupport

/// Why an ext4 file system could not be read or written.
public enum Ext4Error: Error, CustomStringConvertible, Sendable {
    /// libext2fs returned `code` for `operation`; `message` is its own text (`error_message`).
    case library(operation: String, code: Int, message: String)
    /// A read or write of the disk file itself failed.
    case io(path: String, reason: String)
    /// A name ext4 cannot hold: empty, or longer than 255 bytes.
    case invalidName(name: [UInt8])
    /// The same name twice in one directory (inode `directory`).
    case duplicateName(directory: UInt32, name: [UInt8])
    /// A directory whose htree would need more index levels than the file system allows.
    case directoryTooLarge(directory: UInt32, names: Int)
    /// More subdirectories than a link count can say, on a file system without dir_nlink.
    case tooManySubdirectories(directory: UInt32, count: Int)
    /// More names than the writer's in-memory directory table can index (4 G entries or 4 GiB of names).
    case tooManyNames(Int)

    public var description: String {
        switch self {
        case .library(let operation, let code, let message):
            return "ext4: \(operation) failed: \(message) (libext2fs error \(code))"
        case .io(let path, let reason):
            return "\(path): \(reason)"
        case .invalidName(let name):
            return name.isEmpty
                ? "ext4: an empty file name cannot be linked"
                : "ext4: the name \"\(String(decoding: name.prefix(40), as: UTF8.self))...\" is \(name.count) bytes long; "
                    + "ext4 names hold at most 255 bytes: shorten it in the image"
        case .duplicateName(let directory, let name):
            return "ext4: \"\(String(decoding: name, as: UTF8.self))\" occurs twice in the directory at inode \(directory)"
        case .directoryTooLarge(let directory, let names):
            return "ext4: the directory at inode \(directory) holds \(names) names, more than a hashed directory "
                + "of this file system can index: spread them over several directories"
        case .tooManySubdirectories(let directory, let count):
            return "ext4: the directory at inode \(directory) has \(count) subdirectories; without the dir_nlink "
                + "feature a directory can have at most \(EXT2_LINK_MAX - 2)"
        case .tooManyNames(let count):
            return "ext4: \(count) names: more than the writer's directory table can hold"
        }
    }

    /// Throws `.library` with libext2fs's own message when `code` is not 0.
    static func check(_ code: errcode_t, _ operation: @autoclosure () -> String) throws(Ext4Error) {
        guard code != 0 else { return }
        throw .library(operation: operation(), code: Int(code), message: message(code))
    }

    /// libext2fs's text for `code` ("No free space in extended attribute"), or strerror's for an errno.
    public static func message(_ code: errcode_t) -> String {
        _ = errorTableRegistered
        return error_message(code).map { String(cString: $0) } ?? "unknown error"
    }

    /// com_err knows libext2fs's messages only once its table is registered; without it every
    /// code reads "Unknown code ext2 163".
    private static let errorTableRegistered: Void = { initialize_ext2_error_table() }()
}

/// Inodes that are neither files, directories nor symlinks.
public enum SpecialFileKind: Sendable, Equatable {
    case characterDevice(major: UInt32, minor: UInt32)
    case blockDevice(major: UInt32, minor: UInt32)
    case fifo
    case socket
}
