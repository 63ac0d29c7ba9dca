import CExt2fs
import D2LDisk
import D2LExt4
import D2LImage
import Foundation
import Testing

/// A temporary directory holding layer tars and a sparse disk file with an
/// ext4 file system at `offset`, as `d2l build` lays it out.
struct Ext4Fixture {
    let directory: String
    let disk: String
    let offset: Int64 = 1 << 20
    let fsSize: Int64
    /// mkfs.ext4 options beyond the defaults (an inode count, a block size, features).
    let mkfsOptions: [String]

    init(fsSize: Int64 = 64 << 20, mkfsOptions: [String] = ["-b", "4096"]) throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("d2l-disk-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        directory = url.path
        disk = directory + "/disk.img"
        self.fsSize = fsSize
        self.mkfsOptions = mkfsOptions
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }

    /// Writes each entry list as a layer tar and returns them as image layers.
    func layers(_ layers: [[TarEntry]]) throws -> [LayerSource] {
        try layers.enumerated().map { i, entries in
            let path = directory + "/layer\(i).tar"
            try writeTar(path, entries)
            return LayerSource(location: .file(path), hasWhiteouts: true, size: 0, description: "layer \(i)")
        }
    }

    /// Formats the disk with mkfs.ext4 at `offset`, leaving a MiB of other bytes before it.
    func format() throws {
        guard FileManager.default.createFile(atPath: disk, contents: nil) else { throw DiskTestError("create \(disk)") }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: disk))
        try handle.truncate(atOffset: UInt64(offset + fsSize + (1 << 20)))
        try handle.close()
        let (status, output) = try run(
            ["mkfs.ext4", "-q", "-F"] + mkfsOptions + ["-E", "offset=\(offset),nodiscard", disk, "\(fsSize / 1024)k"])
        guard status == 0 else { throw DiskTestError("mkfs.ext4 failed: \(output)") }
    }

    /// Flattens `layers`, writes the result into a fresh file system and opens it for reading.
    @discardableResult
    func build(_ layers: [LayerSource]) throws -> (FileTree, Ext4Reader) {
        try format()
        let tree = try LayerFlattener().scan(layers)
        let writer = try Ext4Writer(path: disk, offset: offset)
        _ = try TreeWriter(bootDirectory: nil).write(tree: tree, layers: layers, to: writer, progress: nil)
        try writer.close()
        return (tree, try Ext4Reader(path: disk, offset: offset))
    }

    func build(_ entries: [[TarEntry]]) throws -> (FileTree, Ext4Reader) {
        try build(try layers(entries))
    }

    /// `e2fsck -fn`: exit status and output; 0 means nothing is wrong.
    func fsck() throws -> (Int32, String) {
        try run("e2fsck", "-fn", "\(disk)?offset=\(offset)")
    }

    /// A debugfs request against the file system, read-only.
    func debugfs(_ request: String) throws -> String {
        try run("debugfs", "-R", request, "\(disk)?offset=\(offset)").1
    }

    @discardableResult
    func run(_ arguments: String...) throws -> (Int32, String) { try run(arguments) }

    @discardableResult
    func run(_ arguments: [String]) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = "/usr/sbin:/sbin:" + (environment["PATH"] ?? "/usr/bin:/bin")
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self))
    }
}

/// Reads an ext4 file system back through libext2fs, read-only.
final class Ext4Reader {
    private var fs: ext2_filsys?

    init(path: String, offset: Int64) throws {
        var handle: ext2_filsys?
        let code = ext2fs_open2(path, "offset=\(offset)", EXT2_FLAG_64BITS, 0, 0, d2l_unix_io_manager(), &handle)
        guard code == 0, let handle else { throw DiskTestError("ext2fs_open2: \(code)") }
        fs = handle
    }

    deinit { ext2fs_close_free(&fs) }

    /// A file's inode number, not following a last symlink; nil when absent.
    func inode(_ path: [UInt8]) -> ext2_ino_t? {
        var ino: ext2_ino_t = 0
        let code = (path + [0]).withUnsafeBufferPointer { buf in
            buf.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buf.count) {
                ext2fs_namei(fs, Ext4Writer.rootInode, Ext4Writer.rootInode, $0, &ino)
            }
        }
        return code == 0 ? ino : nil
    }

    func inode(_ path: String) -> ext2_ino_t? { inode(Array(path.utf8)) }

    struct Stat {
        var ino: ext2_ino_t
        var raw: ext2_inode_large
        var type: UInt16 { raw.i_mode & 0o170000 }
        var permissions: UInt16 { raw.i_mode & 0o7777 }
        var uid: UInt32 { UInt32(raw.i_uid) | UInt32(raw.osd2.linux2.l_i_uid_high) << 16 }
        var gid: UInt32 { UInt32(raw.i_gid) | UInt32(raw.osd2.linux2.l_i_gid_high) << 16 }
        /// Seconds with the extra epoch bits, as the kernel decodes them.
        var mtime: Int64 { Int64(Int32(bitPattern: raw.i_mtime)) + (Int64(raw.i_mtime_extra & 3) << 32) }
        var mtimeNanoseconds: UInt32 { raw.i_mtime_extra >> 2 }
        var links: UInt16 { raw.i_links_count }
        var size: UInt64 { UInt64(raw.i_size) | UInt64(raw.i_size_high) << 32 }
        /// 512-byte sectors allocated (data, extent tree and xattr blocks), without huge_file.
        var sectors: UInt64 { UInt64(raw.i_blocks) | UInt64(raw.osd2.linux2.l_i_blocks_hi) << 32 }
    }

    func stat(_ path: String) throws -> Stat { try stat(Array(path.utf8)) }

    func stat(_ path: [UInt8]) throws -> Stat {
        let ino = try #require(inode(path), "\(path.display) is missing")
        var raw = ext2_inode_large()
        let code = withUnsafeMutablePointer(to: &raw) { p in
            p.withMemoryRebound(to: ext2_inode.self, capacity: 1) {
                ext2fs_read_inode_full(fs, ino, $0, Int32(MemoryLayout<ext2_inode_large>.size))
            }
        }
        guard code == 0 else { throw DiskTestError("read inode \(ino): \(code)") }
        return Stat(ino: ino, raw: raw)
    }

    /// A file's whole content.
    func read(_ path: String) throws -> [UInt8] { try read(Array(path.utf8)) }

    func read(_ path: [UInt8]) throws -> [UInt8] {
        let ino = try #require(inode(path), "\(path.display) is missing")
        var file: ext2_file_t?
        guard ext2fs_file_open(fs, ino, 0, &file) == 0 else { throw DiskTestError("open \(path.display)") }
        defer { ext2fs_file_close(file) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            var got: UInt32 = 0
            let code = buffer.withUnsafeMutableBytes { ext2fs_file_read(file, $0.baseAddress, UInt32($0.count), &got) }
            guard code == 0 else { throw DiskTestError("read \(path.display): \(code)") }
            if got == 0 { break }
            out += buffer[0..<Int(got)]
        }
        return out
    }

    /// `count` bytes of a file from `offset` (for files too large to read whole).
    func read(_ path: String, offset: UInt64, count: Int) throws -> [UInt8] {
        let ino = try #require(inode(path), "\(path) is missing")
        var file: ext2_file_t?
        guard ext2fs_file_open(fs, ino, 0, &file) == 0 else { throw DiskTestError("open \(path)") }
        defer { ext2fs_file_close(file) }
        guard ext2fs_file_llseek(file, offset, EXT2_SEEK_SET, nil) == 0 else { throw DiskTestError("seek \(path)") }
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            var got: UInt32 = 0
            let code = out.withUnsafeMutableBytes {
                ext2fs_file_read(file, $0.baseAddress! + done, UInt32(count - done), &got)
            }
            guard code == 0 else { throw DiskTestError("read \(path): \(code)") }
            if got == 0 { break }
            done += Int(got)
        }
        return Array(out.prefix(done))
    }

    /// A symlink's target, whether kept in the inode (fast) or in a block.
    func symlinkTarget(_ path: String) throws -> String {
        var st = try stat(path)
        let isFast = withUnsafeMutablePointer(to: &st.raw) { p in
            p.withMemoryRebound(to: ext2_inode.self, capacity: 1) { ext2fs_is_fast_symlink($0) }
        }
        if isFast != 0 {
            let bytes = withUnsafeBytes(of: st.raw.i_block) { Array($0.prefix(Int(st.size))) }
            return String(decoding: bytes, as: UTF8.self)
        }
        return String(decoding: try read(path), as: UTF8.self)
    }

    /// The value of one extended attribute, or nil.
    func xattr(_ path: String, _ name: String) throws -> [UInt8]? {
        let ino = try #require(inode(path), "\(path) is missing")
        var h: OpaquePointer?
        guard ext2fs_xattrs_open(fs, ino, &h) == 0 else { throw DiskTestError("xattrs_open") }
        defer { ext2fs_xattrs_close(&h) }
        guard ext2fs_xattrs_read(h) == 0 else { throw DiskTestError("xattrs_read") }
        var value: UnsafeMutableRawPointer?
        var size = 0
        guard ext2fs_xattr_get(h, name, &value, &size) == 0, let value else { return nil }
        defer { var p: UnsafeMutableRawPointer? = value; ext2fs_free_mem(&p) }
        return Array(UnsafeRawBufferPointer(start: value, count: size))
    }

    /// The names in a directory, without "." and "..", sorted by their bytes.
    func list(_ path: String) throws -> [String] {
        let ino = try #require(inode(path), "\(path) is missing")
        final class Names { var names: [String] = [] }
        let names = Names()
        let code = ext2fs_dir_iterate2(
            fs, ino, 0, nil,
            { _, _, dirent, _, _, _, priv in
                guard let dirent, let priv else { return 0 }
                let length = Int(dirent.pointee.name_len & 0xff)
                // The name follows the 8-byte header; read only its length (the entry is not 255 bytes).
                let name = Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(dirent) + 8, count: length))
                let text = String(decoding: name, as: UTF8.self)
                if text != "." && text != ".." {
                    Unmanaged<Names>.fromOpaque(priv).takeUnretainedValue().names.append(text)
                }
                return 0
            }, Unmanaged.passUnretained(names).toOpaque())
        guard code == 0 else { throw DiskTestError("dir_iterate \(path): \(code)") }
        return withExtendedLifetime(names) { names.names.sorted() }
    }
}
