import D2LSupport

/// Where ext4 can keep an inode's extended attributes, and whether a set of them fits.
///
/// Layout from the ext4 documentation ("Extended Attributes", Documentation/filesystems/ext4/attributes.rst)
/// and libext2fs's `ext2fs_xattr_set`: attributes go in the inode's spare bytes, then in one
/// attribute block (the block size less a 32-byte header and a 4-byte end marker); each takes a
/// 16-byte entry plus its name without the namespace prefix, padded to 4, and its value padded to 4.
/// With the `ea_inode` feature (Linux 4.13 and later) a value that does not fit goes into an inode of
/// its own, up to the 64 KiB the kernel's VFS reads or writes (XATTR_SIZE_MAX).
public enum XattrSpace {
    /// The largest value the kernel reads or writes (XATTR_SIZE_MAX, include/uapi/linux/limits.h).
    public static let maximumValueSize = 65536

    /// The first Linux release that mounts a file system with `ea_inode`.
    public static let eaInodeKernel = "4.13"

    /// How a set of attributes fits.
    public enum Fit: Equatable, Sendable {
        /// In the inode and one attribute block.
        case fits
        /// Only with `ea_inode`: `name`'s value (`size` bytes) or the set as a whole is too large
        /// for one block of `limit` bytes.
        case needsEAInode(name: String, size: Int, limit: Int)
        /// Not at all: `name`'s value (`size` bytes) is over `limit`, the most the kernel handles.
        case tooLarge(name: String, size: Int, limit: Int)
    }

    /// Bytes of one attribute block that entries and values can use.
    public static func blockCapacity(blockSize: Int) -> Int { blockSize - 32 - 4 }

    /// Bytes one attribute takes in the inode or the block.
    public static func entryBytes(_ xattr: FileMetadata.Xattr) -> Int {
        let name = shortName(xattr.name)
        return ((16 + name.utf8.count + 3) & ~3) + ((xattr.value.count + 3) & ~3)
    }

    /// Whether `xattrs`, all on one inode, fit a file system of `blockSize`-byte blocks.
    ///
    /// The inode's own spare bytes are not counted, so a set just over one block is reported as
    /// needing `ea_inode` although libext2fs might have split it between inode and block.
    public static func fit(_ xattrs: [FileMetadata.Xattr], blockSize: Int) -> Fit {
        guard !xattrs.isEmpty else { return .fits }
        if let huge = xattrs.first(where: { $0.value.count > maximumValueSize }) {
            return .tooLarge(name: huge.name, size: huge.value.count, limit: maximumValueSize)
        }
        let capacity = blockCapacity(blockSize: blockSize)
        let total = xattrs.reduce(0) { $0 + entryBytes($1) }
        guard total > capacity, let largest = xattrs.max(by: { $0.value.count < $1.value.count }) else { return .fits }
        return .needsEAInode(name: largest.name, size: largest.value.count, limit: capacity)
    }

    /// The name as ext4 stores it: without the namespace prefix its index stands for.
    static func shortName(_ name: String) -> Substring {
        if name == "system.posix_acl_access" || name == "system.posix_acl_default" { return "" }
        for prefix in ["user.", "trusted.", "security.", "system."] where name.hasPrefix(prefix) {
            return name.dropFirst(prefix.count)
        }
        return Substring(name)
    }
}
