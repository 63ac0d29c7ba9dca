import CArchive
import Foundation

/// The kernel modules an initramfs carries, read without unpacking it.
///
/// An initramfs is one or more cpio archives in the "newc" format (`070701`/`070702` headers),
/// each optionally compressed, concatenated (the kernel's `Documentation/driver-api/early-userspace/
/// buffer-format.rst`): Debian's initramfs-tools and dracut write an uncompressed early archive
/// (CPU microcode) followed by a compressed main one. The uncompressed archives are walked here
/// header by header; the first compressed one (the kernel stops at it too: what follows it belongs
/// to it) is handed to libarchive, which knows gzip, xz, lzma, lz4, bzip2 and zstd.
public struct InitramfsListing: Sendable, Equatable {
    /// Module names (`virtio_blk`, `ext4`: file names without `.ko` and compression suffix,
    /// dashes read as underscores, as modprobe treats them).
    public var modules: Set<String>
    /// Every path in the archives, without a leading `./` or `/`.
    public var paths: [String]

    /// Lists the initramfs at `path`.
    ///
    /// - Throws: `ImageError.archive` when the file cannot be read or no part of it is a cpio archive.
    public init(path: String) throws {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
        } catch {
            throw ImageError.archive(path, message: "cannot read it: \(error.localizedDescription)")
        }
        try self.init(bytes: data, name: path)
    }

    /// Lists an initramfs held in memory; `name` is used in errors.
    ///
    /// - Throws: `ImageError.archive` when no part of it is a cpio archive.
    public init(bytes: Data, name: String) throws {
        var paths: [String] = []
        var offset = 0
        var sawArchive = false
        try bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            let count = raw.count
            while offset < count {
                // Archives are padded with zeros to a 4-byte (often 512-byte) boundary.
                while offset < count && raw[offset] == 0 { offset += 1 }
                guard offset < count else { break }
                if offset + 6 <= count, Self.isNewcMagic(raw, at: offset) {
                    guard let end = Self.walkNewc(raw, from: offset, into: &paths) else {
                        throw ImageError.archive(name, message: "a cpio header at byte \(offset) is damaged")
                    }
                    sawArchive = true
                    offset = end
                } else {
                    try Self.listCompressed(UnsafeRawBufferPointer(rebasing: raw[offset...]), name: name, into: &paths)
                    sawArchive = true
                    break
                }
            }
        }
        guard sawArchive else { throw ImageError.archive(name, message: "empty: not an initramfs") }
        self.paths = paths
        modules = Set(paths.compactMap(Self.moduleName(ofPath:)))
    }

    /// `lib/modules/6.1.0-50-amd64/kernel/drivers/block/virtio_blk.ko.xz` -> `virtio_blk`.
    public static func moduleName(ofPath path: String) -> String? {
        var base = path.split(separator: "/").last ?? Substring(path)
        for suffix in [".xz", ".zst", ".gz"] where base.hasSuffix(suffix) { base = base.dropLast(suffix.count) }
        guard base.hasSuffix(".ko") else { return nil }
        return String(base.dropLast(3)).replacingOccurrences(of: "-", with: "_")
    }

    private static func isNewcMagic(_ raw: UnsafeRawBufferPointer, at offset: Int) -> Bool {
        let magic = Array(raw[offset..<offset + 6])
        return magic == Array("070701".utf8) || magic == Array("070702".utf8)
    }

    /// Walks one uncompressed newc archive; returns the offset after its trailer, nil when damaged.
    private static func walkNewc(_ raw: UnsafeRawBufferPointer, from start: Int, into paths: inout [String]) -> Int? {
        var offset = start
        func align4(_ n: Int) -> Int { (n + 3) & ~3 }
        func hex(_ at: Int) -> Int? {
            guard at + 8 <= raw.count else { return nil }
            return Int(String(decoding: raw[at..<at + 8], as: UTF8.self), radix: 16)
        }
        while true {
            guard offset + 110 <= raw.count, isNewcMagic(raw, at: offset),
                let fileSize = hex(offset + 54), let nameSize = hex(offset + 94), nameSize > 0
            else { return nil }
            let nameStart = offset + 110
            guard nameStart + nameSize <= raw.count else { return nil }
            let name = String(decoding: raw[nameStart..<nameStart + nameSize - 1], as: UTF8.self)
            let dataStart = align4(nameStart + nameSize)
            offset = align4(dataStart + fileSize)
            if name == "TRAILER!!!" { return min(offset, raw.count) }
            guard offset <= raw.count else { return nil }
            paths.append(normalized(name))
        }
    }

    private static func listCompressed(_ raw: UnsafeRawBufferPointer, name: String, into paths: inout [String]) throws {
        guard let a = archive_read_new() else { throw ImageError.archive(name, message: "out of memory") }
        defer { archive_read_free(a) }
        archive_read_support_filter_all(a)
        archive_read_support_format_cpio(a)
        guard archive_read_open_memory(a, raw.baseAddress, raw.count) == ARCHIVE_OK else {
            throw ImageError.archive(name, message: "not a cpio archive: " + String(cString: archive_error_string(a)))
        }
        var entry: OpaquePointer?
        while true {
            let status = archive_read_next_header(a, &entry)
            if status == ARCHIVE_EOF { return }
            guard status == ARCHIVE_OK || status == ARCHIVE_WARN, let entry else {
                let why = archive_error_string(a).map { String(cString: $0) } ?? "damaged"
                throw ImageError.archive(name, message: "its compressed cpio archive: \(why)")
            }
            if let path = archive_entry_pathname(entry) { paths.append(normalized(String(cString: path))) }
        }
    }

    private static func normalized(_ name: String) -> String {
        var s = Substring(name)
        if s.hasPrefix("./") { s = s.dropFirst(2) }
        while s.hasPrefix("/") { s = s.dropFirst() }
        return String(s)
    }
}
