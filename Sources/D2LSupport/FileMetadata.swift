/// Owner, permission bits, times and extended attributes of a file: what a layer entry carries and
/// what an ext4 inode stores.
///
/// Every node of a flattened tree holds one, so the fields are ordered widest first: 30 bytes
/// rather than 40 (a million files, 10 MB).
public struct FileMetadata: Sendable, Equatable {
    public var mtime: Int64
    public var xattrs: [Xattr]
    public var uid: UInt32
    public var gid: UInt32
    public var mtimeNanoseconds: UInt32
    /// Permission bits including setuid, setgid and sticky (the low 12 bits of st_mode).
    public var permissions: UInt16

    public struct Xattr: Sendable, Equatable {
        public var name: String
        public var value: [UInt8]
        public init(name: String, value: [UInt8]) { self.name = name; self.value = value }
    }

    public init(
        permissions: UInt16, uid: UInt32 = 0, gid: UInt32 = 0, mtime: Int64 = 0,
        mtimeNanoseconds: UInt32 = 0, xattrs: [Xattr] = []
    ) {
        self.permissions = permissions
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.mtimeNanoseconds = mtimeNanoseconds
        self.xattrs = xattrs
    }
}
