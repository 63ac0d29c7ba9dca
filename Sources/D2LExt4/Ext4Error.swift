import CExt2fs

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

/// Owner, permission bits, times and extended attributes of an inode, as `Ext4Writer` stores them.
public struct InodeAttributes: Sendable, Equatable {
    /// The low 12 bits of st_mode: permissions, setuid, setgid, sticky.
    public var permissions: UInt16
    public var uid: UInt32
    public var gid: UInt32
    /// Seconds since the epoch, used for atime, mtime, ctime and crtime.
    public var mtime: Int64
    public var mtimeNanoseconds: UInt32
    /// Name (with its namespace prefix, `user.`, `security.`, `trusted.`) and value.
    public var xattrs: [(name: String, value: [UInt8])]

    public init(
        permissions: UInt16, uid: UInt32 = 0, gid: UInt32 = 0, mtime: Int64 = 0, mtimeNanoseconds: UInt32 = 0,
        xattrs: [(name: String, value: [UInt8])] = []
    ) {
        self.permissions = permissions
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.mtimeNanoseconds = mtimeNanoseconds
        self.xattrs = xattrs
    }

    public static func == (a: InodeAttributes, b: InodeAttributes) -> Bool {
        a.permissions == b.permissions && a.uid == b.uid && a.gid == b.gid && a.mtime == b.mtime
            && a.mtimeNanoseconds == b.mtimeNanoseconds && a.xattrs.elementsEqual(b.xattrs) { $0 == $1 }
    }
}

/// Inodes that are neither files, directories nor symlinks.
public enum SpecialFileKind: Sendable, Equatable {
    case characterDevice(major: UInt32, minor: UInt32)
    case blockDevice(major: UInt32, minor: UInt32)
    case fifo
    case socket
}
