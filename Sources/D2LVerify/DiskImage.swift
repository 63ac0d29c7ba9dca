import CExt2fs
import Foundation

/// Disk image formats QEMU reads, as libvirt names them.
public enum DiskFormat: String, Sendable, CaseIterable, Codable {
    case raw, qcow2, vmdk, vdi, vhdx, vpc

    /// Detects the format from the file's magic bytes (QEMU's own probes, minus its guesswork).
    public static func detect(path: String) throws -> DiskFormat {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw VerifyError.unreadableImage(path: path, reason: "cannot open it for reading")
        }
        defer { try? handle.close() }
        let head = (try? handle.read(upToCount: 512)) ?? Data()
        let size = (try? handle.seekToEnd()) ?? 0
        var footer = Data()
        if size >= 512 {
            try? handle.seek(toOffset: size - 512)
            footer = (try? handle.read(upToCount: 512)) ?? Data()
        }
        return detect(head: [UInt8](head), footer: [UInt8](footer))
    }

    static func detect(head: [UInt8], footer: [UInt8]) -> DiskFormat {
        func starts(_ bytes: [UInt8], _ magic: String, at offset: Int = 0) -> Bool {
            let magicBytes = Array(magic.utf8)
            return bytes.count >= offset + magicBytes.count
                && Array(bytes[offset..<offset + magicBytes.count]) == magicBytes
        }
        if head.starts(with: [0x51, 0x46, 0x49, 0xFB]) { return .qcow2 }
        if starts(head, "KDMV") || starts(head, "# Disk DescriptorFile") { return .vmdk }
        if head.count >= 0x44, Array(head[0x40..<0x44]) == [0x7F, 0x10, 0xDA, 0xBE] { return .vdi }
        if starts(head, "vhdxfile") { return .vhdx }
        if starts(head, "conectix") || starts(footer, "conectix") { return .vpc }
        return .raw
    }
}

/// The init system an image boots, which decides what the init stage looks for.
public enum InitSystem: String, Sendable, Codable {
    case systemd, openrc, sysvinit, busybox, unknown
}

/// What the verifier learns from a disk before booting it.
public struct GuestInfo: Sendable, Codable, Equatable {
    public var prettyName: String?
    public var initSystem: InitSystem
    /// The chain /sbin/init resolves through, inside the image.
    public var initPath: [String]

    public init(prettyName: String? = nil, initSystem: InitSystem = .unknown, initPath: [String] = []) {
        self.prettyName = prettyName
        self.initSystem = initSystem
        self.initPath = initPath
    }
}

/// Reads the root file system of a raw disk, read-only, through libext2fs.
public enum GuestInspector {
    /// Inspects a raw disk; nil when it has no readable ext2/3/4 root (other formats, other file systems).
    public static func inspect(path: String, format: DiskFormat) -> GuestInfo? {
        guard format == .raw, let offset = linuxPartitionOffset(path: path) else { return nil }
        guard let root = try? Ext2ReadOnly(path: path, offset: offset) else { return nil }
        var info = GuestInfo()
        if let text = root.readFile("/etc/os-release") ?? root.readFile("/usr/lib/os-release") {
            info.prettyName = osReleaseValue("PRETTY_NAME", in: text)
        }
        let chain = root.resolveChain("/sbin/init")
        info.initPath = chain
        info.initSystem = classify(chain: chain, exists: { root.exists($0) })
        return info
    }

    static func osReleaseValue(_ key: String, in text: String) -> String? {
        for line in text.split(separator: "\n") where line.hasPrefix(key + "=") {
            var value = line.dropFirst(key.count + 1)
            if value.hasPrefix("\""), value.hasSuffix("\""), value.count >= 2 { value = value.dropFirst().dropLast() }
            return String(value)
        }
        return nil
    }

    /// Decides the init system from where /sbin/init leads.
    static func classify(chain: [String], exists: (String) -> Bool) -> InitSystem {
        guard let last = chain.last else { return .unknown }
        if chain.contains(where: { $0.contains("systemd") }) { return .systemd }
        if chain.contains(where: { $0.hasSuffix("openrc-init") }) { return .openrc }
        if chain.contains(where: { $0.hasSuffix("busybox") }) { return .busybox }
        if last.hasSuffix("/init") && chain.count == 1 {
            // A real /sbin/init binary: sysvinit (with or without OpenRC behind it).
            return exists("/etc/inittab") ? .sysvinit : .unknown
        }
        return .unknown
    }

    /// The byte offset of the first Linux partition of an MBR disk, or 0 for a bare file system.
    public static func linuxPartitionOffset(path: String) -> UInt64? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.read(upToCount: 2048), data.count == 2048 else { return nil }
        let bytes = [UInt8](data)
        if bytes[1080] == 0x53, bytes[1081] == 0xEF { return 0 }  // ext superblock magic at 1024+56
        return mbrPartition(sector: Array(bytes[0..<512]), types: linuxTypes)?.byteOffset
    }

    /// MBR partition types: Linux; FAT12/16/32 (CHS and LBA) and the EFI system partition.
    public static let linuxTypes: Set<UInt8> = [0x83]
    public static let fatTypes: Set<UInt8> = [0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E, 0xEF]

    /// The first primary partition of an MBR disk whose type is one of `types`: its number (1-4) and byte offset.
    public static func mbrPartition(path: String, types: Set<UInt8>) -> (number: Int, byteOffset: UInt64)? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.read(upToCount: 512) else { return nil }
        return mbrPartition(sector: [UInt8](data), types: types)
    }

    static func mbrPartition(sector: [UInt8], types: Set<UInt8>) -> (number: Int, byteOffset: UInt64)? {
        guard sector.count >= 512, sector[510] == 0x55, sector[511] == 0xAA else { return nil }
        for index in 0..<4 {
            let entry = 446 + index * 16
            guard types.contains(sector[entry + 4]) else { continue }
            let lba = (0..<4).reduce(UInt64(0)) { $0 | UInt64(sector[entry + 8 + $1]) << (8 * UInt64($1)) }
            return (index + 1, lba * 512)
        }
        return nil
    }
}

/// An ext2/3/4 file system opened read-only inside a disk file.
final class Ext2ReadOnly {
    private let fs: ext2_filsys

    init(path: String, offset: UInt64) throws {
        var handle: ext2_filsys?
        let error = ext2fs_open2(path, "offset=\(offset)", 0, 0, 0, d2l_unix_io_manager(), &handle)
        guard error == 0, let handle else {
            throw VerifyError.unreadableImage(path: path, reason: "no ext4 root at offset \(offset)")
        }
        fs = handle
    }
    deinit {
        var handle: ext2_filsys? = fs
        ext2fs_close_free(&handle)
    }

    private func lookup(_ path: String, follow: Bool) -> ext2_ino_t? {
        var inode: ext2_ino_t = 0
        let root = ext2_ino_t(EXT2_ROOT_INO)
        let error = follow
            ? ext2fs_namei_follow(fs, root, root, path, &inode) : ext2fs_namei(fs, root, root, path, &inode)
        return error == 0 ? inode : nil
    }

    func exists(_ path: String) -> Bool { lookup(path, follow: true) != nil }

    /// A file's bytes (up to 1 MiB), following symlinks inside the image.
    func readFile(_ path: String) -> String? {
        guard let ino = lookup(path, follow: true) else { return nil }
        return read(ino: ino).map { String(decoding: $0, as: UTF8.self) }
    }

    private func read(ino: ext2_ino_t, limit: Int = 1 << 20) -> [UInt8]? {
        var file: ext2_file_t?
        guard ext2fs_file_open(fs, ino, 0, &file) == 0, let file else { return nil }
        defer { ext2fs_file_close(file) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while out.count < limit {
            var got: UInt32 = 0
            let error = buffer.withUnsafeMutableBytes {
                ext2fs_file_read(file, $0.baseAddress, UInt32($0.count), &got)
            }
            guard error == 0 else { return nil }
            if got == 0 { break }
            out += buffer[0..<Int(got)]
        }
        return out
    }

    /// The target of a symlink, or nil when `path` is not one.
    func readLink(_ path: String) -> String? {
        guard let ino = lookup(path, follow: false) else { return nil }
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

    /// The paths `path` passes through while its symlinks are followed (at most 16 links).
    func resolveChain(_ path: String) -> [String] {
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
