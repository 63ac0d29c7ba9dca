import CExt2fs
import Foundation

/// An ext2/3/4 file system opened read-only inside a disk file, through libext2fs: the verifier and
/// the disk model read a root file system's facts with it without mounting anything.
public final class Ext4Reader {
    private var fs: ext2_filsys?

    /// Opens the file system at byte `offset` of `path`.
    ///
    /// - Throws: `Ext4Error.library` when there is no ext2/3/4 file system there.
    public init(path: String, offset: UInt64) throws(Ext4Error) {
        var handle: ext2_filsys?
        try Ext4Error.check(
            ext2fs_open2(path, "offset=\(offset)", 0, 0, 0, d2l_unix_io_manager(), &handle),
            "open the file system at byte \(offset) of \(path)")
        fs = handle
    }

    deinit { ext2fs_close_free(&fs) }

    /// The file system's UUID (`s_uuid`), as `root=UUID=` names it.
    public var uuid: String {
        guard let fs else { return "" }
        let bytes = withUnsafeBytes(of: fs.pointee.super.pointee.s_uuid) { Array($0) }
        let hex = bytes.map { String(format: "%02x", $0) }.joined()
        var out = ""
        for (index, character) in hex.enumerated() {
            if [8, 12, 16, 20].contains(index) { out += "-" }
            out.append(character)
        }
        return out
    }

    private func lookup(_ path: String, follow: Bool) -> ext2_ino_t? {
        guard let fs else { return nil }
        var inode: ext2_ino_t = 0
        let root = ext2_ino_t(EXT2_ROOT_INO)
        let error = follow
            ? ext2fs_namei_follow(fs, root, root, path, &inode) : ext2fs_namei(fs, root, root, path, &inode)
        return error == 0 ? inode : nil
    }

    /// Whether `path` exists, following symlinks inside the file system.
    public func exists(_ path: String) -> Bool { lookup(path, follow: true) != nil }

    /// The first `limit` bytes of a file, following symlinks inside the file system; nil when missing.
    public func read(_ path: String, limit: Int = 1 << 20) -> [UInt8]? {
        guard let ino = lookup(path, follow: true) else { return nil }
        return read(ino: ino, limit: limit)
    }

    private func read(ino: ext2_ino_t, limit: Int) -> [UInt8]? {
        guard let fs else { return nil }
        var file: ext2_file_t?
        guard ext2fs_file_open(fs, ino, 0, &file) == 0, let file else { return nil }
        defer { ext2fs_file_close(file) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: min(65536, max(limit, 1)))
        while out.count < limit {
            var got: UInt32 = 0
            let want = UInt32(min(buffer.count, limit - out.count))
            let error = buffer.withUnsafeMutableBytes { ext2fs_file_read(file, $0.baseAddress, want, &got) }
            guard error == 0 else { return nil }
            if got == 0 { break }
            out += buffer[0..<Int(got)]
        }
        return out
    }

    /// The target of a symlink, or nil when `path` is not one.
    public func readLink(_ path: String) -> String? {
        guard let fs, let ino = lookup(path, follow: false) else { return nil }
        var inode = ext2_inode()
        guard ext2fs_read_inode(fs, ino, &inode) == 0, inode.i_mode & 0xF000 == 0xA000 else { return nil }
        if ext2fs_is_fast_symlink(&inode) != 0 {
            let size = Int(inode.i_size)
            return withUnsafeBytes(of: &inode.i_block) { String(decoding: $0.prefix(size), as: UTF8.self) }
        }
        if inode.i_flags & UInt32(EXT4_INLINE_DATA_FL) != 0 {
            var buffer = [UInt8](repeating: 0, count: 4096)
            var size: Int = 0
            guard ext2fs_inline_data_get(fs, ino, &inode, &buffer, &size) == 0 else { return nil }
            return String(decoding: buffer.prefix(size), as: UTF8.self)
        }
        return read(ino: ino, limit: 4096).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The paths `path` passes through while its symlinks are followed (at most 16 links); empty
    /// when it does not exist.
    public func resolveChain(_ path: String) -> [String] {
        guard exists(path) else { return [] }
        var chain = [path]
        var current = path
        for _ in 0..<16 {
            guard let target = readLink(current) else { break }
            if target.hasPrefix("/") {
                current = target
            } else {
                let directory = (current as NSString).deletingLastPathComponent
                current = (directory as NSString).appendingPathComponent(target)
            }
            chain.append(current)
        }
        return chain
    }
}
