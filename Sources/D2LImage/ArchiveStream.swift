import CArchive
import D2LSupport
import Foundation

/// Where a layer's bytes come from: a whole file, or a range inside an outer tar.
final class ByteSource {
    let path: String
    let fd: Int32
    let start: Int64
    let length: Int64
    var position: Int64 = 0
    let buffer: UnsafeMutableRawPointer
    /// Bytes per read: large when data is wanted, small when mostly headers are (so that
    /// file data is skipped with a seek instead of being read and thrown away).
    let bufferSize: Int
    /// Hashes every byte read; nil once a skip jumped over bytes.
    var hasher: SHA256Hasher?
    let allowSeek: Bool

    init(
        path: String, start: Int64 = 0, length: Int64? = nil, hash: Bool = false, allowSeek: Bool,
        bufferSize: Int = 1 << 20
    ) throws {
        self.bufferSize = bufferSize
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw ImageError.archive(path, message: String(cString: strerror(errno)))
        }
        self.fd = fd
        self.path = path
        self.start = start
        if let length {
            self.length = length
        } else {
            var st = stat()
            fstat(fd, &st)
            self.length = Int64(st.st_size)
        }
        self.hasher = hash ? SHA256Hasher() : nil
        self.allowSeek = allowSeek && !hash
        buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 4096)
    }

    deinit {
        buffer.deallocate()
        close(fd)
    }

    func read() -> Int {
        let want = Int(min(Int64(bufferSize), length - position))
        guard want > 0 else { return 0 }
        let n = pread(fd, buffer, want, off_t(start + position))
        guard n > 0 else { return n < 0 ? -1 : 0 }
        position += Int64(n)
        hasher?.update(UnsafeRawBufferPointer(start: buffer, count: n))
        return n
    }

    func skip(_ request: Int64) -> Int64 {
        guard allowSeek else { return 0 }
        let n = min(request, length - position)
        position += n
        return n
    }
}

/// A libarchive read handle over a layer (a tar, maybe compressed) or a directory.
public final class ArchiveStream {
    private let handle: OpaquePointer
    private let entry: OpaquePointer
    private let source: ByteSource?
    private let resolver: OpaquePointer?
    private let diskRoot: [UInt8]?
    /// The layer or folder, as errors name it.
    public let what: String
    private var spare: OpaquePointer?
    private var pendingSpare = false
    private var closed = false
    private var atEnd = false
    /// Entries whose names escaped the root or could not be decoded, skipped with a warning.
    public private(set) var skippedNames: [String] = []

    /// Opens a tar stream (any compression libarchive reads) over `source`.
    init(source: ByteSource, description: String) throws {
        guard let a = archive_read_new(), let e = archive_entry_new() else {
            throw ImageError.archive(description, message: "out of memory")
        }
        handle = a
        entry = e
        self.source = source
        resolver = nil
        diskRoot = nil
        what = description
        archive_read_support_filter_all(a)
        archive_read_support_format_tar(a)
        archive_read_support_format_gnutar(a)
        let unmanaged = Unmanaged.passUnretained(source).toOpaque()
        archive_read_set_callback_data(a, unmanaged)
        archive_read_set_read_callback(a) { _, client, out in
            let src = Unmanaged<ByteSource>.fromOpaque(client!).takeUnretainedValue()
            let n = src.read()
            out?.pointee = UnsafeRawPointer(src.buffer)
            return n
        }
        archive_read_set_skip_callback(a) { _, client, request in
            let src = Unmanaged<ByteSource>.fromOpaque(client!).takeUnretainedValue()
            return src.skip(request)
        }
        try check(archive_read_open1(a))
    }

    /// Opens a directory tree for reading, symlinks not followed, hardlinks detected.
    init(directory: String) throws {
        guard let a = archive_read_disk_new(), let e = archive_entry_new(),
            let r = archive_entry_linkresolver_new()
        else {
            throw ImageError.archive(directory, message: "out of memory")
        }
        handle = a
        entry = e
        source = nil
        resolver = r
        what = directory
        var root = Array(directory.utf8)
        while root.count > 1 && root.last == UInt8(ascii: "/") { root.removeLast() }
        diskRoot = root
        archive_entry_linkresolver_set_strategy(r, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED)
        archive_read_disk_set_symlink_physical(a)
        archive_read_disk_set_standard_lookup(a)
        archive_read_disk_set_behavior(a, ARCHIVE_READDISK_NO_TRAVERSE_MOUNTS)
        try check(archive_read_disk_open(a, directory))
    }

    deinit {
        if !closed { archive_read_free(handle) }
        archive_entry_free(entry)
        if let spare { archive_entry_free(spare) }
        if let resolver { archive_entry_linkresolver_free(resolver) }
    }

    private func check(_ code: Int32) throws {
        if code == ARCHIVE_OK || code == ARCHIVE_WARN { return }
        if diskRoot != nil {
            let message = Self.message(handle)
            let reason = archive_errno(handle) > 0 ? String(cString: strerror(archive_errno(handle))) : message
            // libarchive names a file of a directory input by its base name only ("Can't open `zero'"):
            // give its full path and the system's reason. (The entry is cleared when a header fails
            // before it is known, so a path here is the failing entry's.)
            if let source = archive_entry_pathname(entry) {
                throw ImageError.archive(String(cString: source), message: "cannot read it: \(reason)")
            }
            // A folder it cannot enter: "PATH: Couldn't visit directory", with no errno; ask the system why.
            if let visit = message.range(of: ": Couldn't visit directory") {
                let folder = String(message[..<visit.lowerBound])
                if let handle = opendir(folder) {
                    closedir(handle)
                } else {
                    throw ImageError.archive(folder, message: "cannot enter it: \(String(cString: strerror(errno)))")
                }
            }
            throw ImageError.archive(what, message: message)
        }
        // libarchive's "Truncated input file" or "Damaged tar archive" is about the decompressed
        // stream: say which compression it came through.
        var message = Self.message(handle)
        if source != nil, archive_filter_count(handle) > 1, let filter = archive_filter_name(handle, 0) {
            message += " (in its \(String(cString: filter)) stream: cut short or damaged)"
        }
        throw ImageError.archive(what, message: message)
    }

    static func message(_ a: OpaquePointer) -> String {
        if let m = archive_error_string(a) { return String(cString: m) }
        return "libarchive error \(archive_errno(a))"
    }

    /// The next entry, or nil at the end of the layer.
    ///
    /// - Throws: `ImageError.archive` with libarchive's message when the stream is damaged.
    public func next() throws -> LayerEntry? {
        while true {
            let current: OpaquePointer
            if diskRoot != nil {
                let code = archive_read_next_header2(handle, entry)
                if code == ARCHIVE_EOF { atEnd = true; return nil }
                try check(code)
                archive_read_disk_descend(handle)
                var e: OpaquePointer? = entry
                var s: OpaquePointer? = nil
                archive_entry_linkify(resolver, &e, &s)
                guard let e else { continue }
                current = e
            } else {
                var e: OpaquePointer?
                let code = archive_read_next_header(handle, &e)
                if code == ARCHIVE_EOF { atEnd = true; return nil }
                try check(code)
                guard let e else { continue }
                current = e
            }
            if let parsed = try parse(current) { return parsed }
        }
    }

    private func rawPath(_ c: UnsafePointer<CChar>?) -> [UInt8]? {
        guard let c else { return nil }
        var bytes = Array(UnsafeRawBufferPointer(start: c, count: strlen(c)))
        if let root = diskRoot {
            guard bytes.starts(with: root) else { return nil }
            bytes.removeFirst(root.count)
        }
        return bytes
    }

    private func parse(_ e: OpaquePointer) throws -> LayerEntry? {
        guard let raw = rawPath(archive_entry_pathname(e)) ?? rawPath(archive_entry_pathname_utf8(e)) else {
            let shown = archive_entry_pathname_utf8(e).map { String(cString: $0) } ?? "?"
            skippedNames.append(shown)
            return nil
        }
        // '..' could climb out of the root: refused, as Docker refuses a layer that breaks out.
        guard let path = LayerEntry.normalise(raw) else {
            throw ImageError.archive(
                what, message: "entry \(String(decoding: raw, as: UTF8.self)) has a '..' in its name: refused")
        }
        let shown = String(decoding: path, as: UTF8.self)
        // ext4 keeps 32-bit owners, and seconds from 1901 to 2446 (34 bits with 256-byte inodes).
        for (role, id) in [("owner", archive_entry_uid(e)), ("group", archive_entry_gid(e))]
        where !(0...Int64(UInt32.max)).contains(id) {
            throw ImageError.archive(what, message: "entry \(shown) has \(role) \(id), beyond the 32 bits ext4 stores")
        }
        let mtime = Int64(archive_entry_mtime(e))
        guard (Int64(Int32.min)...(Int64(1) << 34) + Int64(Int32.min) - 1).contains(mtime) else {
            throw ImageError.archive(what, message: "entry \(shown) has time \(mtime), outside the years 1901-2446 ext4 stores")
        }
        var meta = EntryMetadata(
            permissions: UInt16(archive_entry_perm(e) & 0o7777),
            uid: UInt32(truncatingIfNeeded: archive_entry_uid(e)),
            gid: UInt32(truncatingIfNeeded: archive_entry_gid(e)),
            mtime: Int64(archive_entry_mtime(e)),
            mtimeNanoseconds: UInt32(truncatingIfNeeded: max(0, archive_entry_mtime_nsec(e))))
        if archive_entry_xattr_reset(e) > 0 {
            var name: UnsafePointer<CChar>?
            var value: UnsafeRawPointer?
            var size = 0
            while archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK {
                guard let name else { continue }
                let bytes = value.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
                let key = String(cString: name)
                // pax archives may carry the same attribute twice (LIBARCHIVE. and SCHILY.): keep the last.
                meta.xattrs.removeAll { $0.name == key }
                meta.xattrs.append(.init(name: key, value: bytes))
            }
        }
        if let link = archive_entry_hardlink(e), let rawLink = rawPath(link) {
            guard let target = LayerEntry.normalise(rawLink) else {
                throw ImageError.archive(
                    what, message: "hard link \(shown) -> \(String(decoding: rawLink, as: UTF8.self)) has a '..' in its target: refused")
            }
            return LayerEntry(path: path, kind: .hardlink(target: target), metadata: meta)
        }
        let type = archive_entry_filetype(e)
        let kind: EntryKind
        switch type {
        case 0o100000: kind = .regular(size: UInt64(max(0, archive_entry_size(e))))
        case 0o040000: kind = .directory
        case 0o120000:
            let target = archive_entry_symlink(e).map {
                Array(UnsafeRawBufferPointer(start: $0, count: strlen($0)))
            } ?? []
            kind = .symlink(target: target)
        case 0o020000:
            kind = .characterDevice(
                major: UInt32(archive_entry_rdevmajor(e)), minor: UInt32(archive_entry_rdevminor(e)))
        case 0o060000:
            kind = .blockDevice(
                major: UInt32(archive_entry_rdevmajor(e)), minor: UInt32(archive_entry_rdevminor(e)))
        case 0o010000: kind = .fifo
        case 0o140000: kind = .socket
        default: kind = .regular(size: UInt64(max(0, archive_entry_size(e))))
        }
        var entry = LayerEntry(path: path, kind: kind, metadata: meta)
        if case .regular(let size) = kind { entry.dataRegions = Self.dataRegions(e, size: size) }
        return entry
    }

    /// The data ranges of a sparse entry (GNU 'S' headers, pax GNU.sparse 0.x and 1.0 maps, which
    /// libarchive reads with the header; a directory input's holes), or nil for a file stored whole.
    private static func dataRegions(_ e: OpaquePointer, size: UInt64) -> [Range<UInt64>]? {
        let count = archive_entry_sparse_reset(e)
        guard count > 0 else { return nil }
        var regions: [Range<UInt64>] = []
        regions.reserveCapacity(Int(count))
        var offset: la_int64_t = 0
        var length: la_int64_t = 0
        while archive_entry_sparse_next(e, &offset, &length) == ARCHIVE_OK {
            guard offset >= 0, length > 0, offset <= la_int64_t.max - length else { continue }
            regions.append(UInt64(offset)..<UInt64(offset + length))
        }
        let normalised = LayerEntry.normaliseRegions(regions, size: size)
        // A map with one region over the whole file says nothing a dense file does not.
        if normalised.count == 1, normalised[0] == 0..<size { return nil }
        return normalised
    }

    /// Reads the current entry's data in blocks; `body` gets each block and its offset.
    ///
    /// - Throws: `ImageError.archive` with libarchive's message, and what `body` throws.
    public func readData(_ body: (UnsafeRawBufferPointer, Int64) throws -> Void) throws {
        var buffer: UnsafeRawPointer?
        var size = 0
        var offset: Int64 = 0
        while true {
            let code = archive_read_data_block(handle, &buffer, &size, &offset)
            if code == ARCHIVE_EOF { return }
            try check(code)
            if let buffer, size > 0 { try body(UnsafeRawBufferPointer(start: buffer, count: size), offset) }
        }
    }

    /// Reads the current entry's data into memory (for small files).
    ///
    /// - Throws: `ImageError.archive` with libarchive's message.
    public func readAll(limit: Int = 1 << 20) throws -> [UInt8] {
        var out: [UInt8] = []
        try readData { block, offset in
            let start = Int(offset)
            guard start < limit else { return }
            let count = min(block.count, limit - start)
            if out.count < start + count { out += [UInt8](repeating: 0, count: start + count - out.count) }
            out.withUnsafeMutableBytes { dst in
                dst.baseAddress!.advanced(by: start).copyMemory(from: block.baseAddress!, byteCount: count)
            }
        }
        return out
    }

    /// Finishes the stream.
    ///
    /// - Throws: `ImageError.archive` when the end of the archive is damaged.
    public func finish() throws {
        if diskRoot == nil && !atEnd {
            // Let libarchive consume the end-of-archive blocks.
            while try next() != nil {}
        }
        archive_read_close(handle)
        archive_read_free(handle)
        closed = true
    }
}
