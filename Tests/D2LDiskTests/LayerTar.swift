import CArchive
import D2LImage
import Foundation
import Testing

/// One entry of a layer tar the disk tests write (a declarative cousin of
/// D2LImageTests' TarBuilder: test targets cannot share code).
struct TarEntry {
    enum Kind {
        case file([UInt8])
        /// A file of `size` bytes holding `data` at the given offsets and holes elsewhere.
        case sparse(size: Int, data: [(offset: Int, bytes: [UInt8])])
        case directory
        case symlink(String)
        case hardlink(String)
        case characterDevice(UInt32, UInt32)
        case blockDevice(UInt32, UInt32)
        case fifo
    }
    var path: [UInt8]
    var kind: Kind
    var mode: UInt16 = 0o644
    var uid: Int64 = 0
    var gid: Int64 = 0
    var mtime: Int64 = 1_700_000_000
    var nanoseconds: Int = 0
    var xattrs: [(String, [UInt8])] = []

    init(_ path: String, _ kind: Kind, mode: UInt16? = nil) {
        self.path = Array(path.utf8)
        self.kind = kind
        if let mode {
            self.mode = mode
        } else if case .directory = kind {
            self.mode = 0o755
        }
    }

    static func file(_ path: String, _ text: String, mode: UInt16 = 0o644) -> TarEntry {
        TarEntry(path, .file(Array(text.utf8)), mode: mode)
    }

    static func whiteout(_ path: String) -> TarEntry {
        let (parent, name) = Array(path.utf8).splitParent
        var e = TarEntry("", .file([]))
        e.path = (parent.isEmpty ? [] : parent + [UInt8(ascii: "/")]) + Array(".wh.".utf8) + name
        return e
    }
}

/// Writes `entries` as a pax tar at `path` through libarchive.
func writeTar(_ path: String, _ entries: [TarEntry]) throws {
    let a = try #require(archive_write_new())
    defer { archive_write_free(a) }
    // Full pax (not pax_restricted), so that every entry carries its sub-second mtime.
    archive_write_set_format_pax(a)
    archive_write_set_format_option(a, "pax", "hdrcharset", "BINARY")
    func check(_ code: Int32) throws {
        guard code != ARCHIVE_OK else { return }
        let message = archive_error_string(a).map { String(cString: $0) } ?? "code \(code)"
        throw DiskTestError("libarchive: \(message)")
    }
    try check(archive_write_open_filename(a, path))
    for entry in entries {
        let e = try #require(archive_entry_new())
        defer { archive_entry_free(e) }
        (entry.path + [0]).withUnsafeBufferPointer { buf in
            buf.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buf.count) { archive_entry_copy_pathname(e, $0) }
        }
        archive_entry_set_perm(e, mode_t(entry.mode))
        archive_entry_set_uid(e, entry.uid)
        archive_entry_set_gid(e, entry.gid)
        archive_entry_set_mtime(e, time_t(entry.mtime), entry.nanoseconds)
        for (name, value) in entry.xattrs {
            value.withUnsafeBytes { archive_entry_xattr_add_entry(e, name, $0.baseAddress, $0.count) }
        }
        var data: [UInt8] = []
        // st_mode types: libarchive's AE_IF* macros are casts Swift cannot import.
        switch entry.kind {
        case .file(let bytes):
            archive_entry_set_filetype(e, 0o100000)
            data = bytes
        case .sparse(let size, let parts):
            archive_entry_set_filetype(e, 0o100000)
            // The size first: libarchive drops a sparse region that ends past the entry's size.
            archive_entry_set_size(e, la_int64_t(size))
            for part in parts {
                archive_entry_sparse_add_entry(e, la_int64_t(part.offset), la_int64_t(part.bytes.count))
            }
            try check(archive_write_header(a, e))
            // The pax writer takes the whole file and skips the holes itself: hand it the holes as
            // zeros a MiB at a time, so that a file of gigabytes needs no gigabytes of memory.
            let zeros = [UInt8](repeating: 0, count: 1 << 20)
            var position = 0
            func write(_ bytes: UnsafeRawBufferPointer) throws {
                let n = archive_write_data(a, bytes.baseAddress, bytes.count)
                guard n == bytes.count else { throw DiskTestError("short tar write for \(entry.path.display)") }
                position += bytes.count
            }
            func zeroFill(to end: Int) throws {
                while position < end { try zeros.withUnsafeBytes { try write(UnsafeRawBufferPointer(rebasing: $0.prefix(end - position))) } }
            }
            for part in parts.sorted(by: { $0.offset < $1.offset }) {
                try zeroFill(to: part.offset)
                try part.bytes.withUnsafeBytes { try write($0) }
            }
            try zeroFill(to: size)
            continue
        case .directory:
            archive_entry_set_filetype(e, 0o040000)
        case .symlink(let target):
            archive_entry_set_filetype(e, 0o120000)
            archive_entry_copy_symlink(e, target)
        case .hardlink(let target):
            archive_entry_set_filetype(e, 0o100000)
            archive_entry_copy_hardlink(e, target)
        case .characterDevice(let major, let minor), .blockDevice(let major, let minor):
            if case .characterDevice = entry.kind {
                archive_entry_set_filetype(e, 0o020000)
            } else {
                archive_entry_set_filetype(e, 0o060000)
            }
            archive_entry_set_rdevmajor(e, dev_t(major))
            archive_entry_set_rdevminor(e, dev_t(minor))
        case .fifo:
            archive_entry_set_filetype(e, 0o010000)
        }
        archive_entry_set_size(e, la_int64_t(data.count))
        try check(archive_write_header(a, e))
        if !data.isEmpty {
            let n = data.withUnsafeBytes { archive_write_data(a, $0.baseAddress, $0.count) }
            guard n == data.count else { throw DiskTestError("short tar write for \(entry.path.display)") }
        }
    }
    try check(archive_write_close(a))
}

struct DiskTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
