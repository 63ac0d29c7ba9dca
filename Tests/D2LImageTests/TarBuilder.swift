import CArchive
import D2LImage
import Foundation
import Testing

/// st_mode file types (libarchive's AE_IF* macros are casts Swift cannot import).
enum FileType {
    static let reg: UInt32 = 0o100000
    static let dir: UInt32 = 0o040000
    static let lnk: UInt32 = 0o120000
    static let chr: UInt32 = 0o020000
    static let blk: UInt32 = 0o060000
    static let ifo: UInt32 = 0o010000
}

/// Writes small tar files (pax, optionally gzip) through libarchive's writer, so the
/// tests can make every kind of layer entry the flattener must handle.
final class TarBuilder {
    private var archive: OpaquePointer?
    let path: String

    struct Meta {
        var mode: UInt16
        var uid: Int64 = 0
        var gid: Int64 = 0
        var mtime: Int64 = 1_700_000_000
        var nanoseconds: Int = 0
        var xattrs: [(String, [UInt8])] = []
    }

    init(path: String, gzip: Bool = false) throws {
        self.path = path
        let a = try #require(archive_write_new())
        archive = a
        #expect(archive_write_set_format_pax_restricted(a) == ARCHIVE_OK)
        // Names are raw bytes, as in real layers: store them untranslated (pax hdrcharset=BINARY).
        #expect(archive_write_set_format_option(a, "pax", "hdrcharset", "BINARY") == ARCHIVE_OK)
        if gzip { #expect(archive_write_add_filter_gzip(a) == ARCHIVE_OK) }
        try Self.check(a, archive_write_open_filename(a, path))
    }

    deinit { if let archive { archive_write_free(archive) } }

    /// Writes a whole tar; `body` adds the entries.
    @discardableResult
    static func write(_ path: String, gzip: Bool = false, _ body: (TarBuilder) throws -> Void) throws -> String {
        let tar = try TarBuilder(path: path, gzip: gzip)
        try body(tar)
        try tar.finish()
        return path
    }

    func finish() throws {
        guard let a = archive else { return }
        try Self.check(a, archive_write_close(a))
        archive_write_free(a)
        archive = nil
    }

    private static func check(_ a: OpaquePointer, _ code: Int32) throws {
        if code == ARCHIVE_OK { return }
        let message = archive_error_string(a).map { String(cString: $0) } ?? "code \(code)"
        Issue.record("libarchive: \(message)")
        throw CocoaError(.fileWriteUnknown)
    }

    /// Adds one entry; `configure` sets its type-specific fields; `data` is written as its content.
    private func add(
        _ path: [UInt8], type: UInt32, meta: Meta, data: [UInt8] = [], configure: (OpaquePointer) -> Void = { _ in }
    ) throws {
        let a = try #require(archive)
        let e = try #require(archive_entry_new())
        defer { archive_entry_free(e) }
        (path + [0]).withUnsafeBufferPointer { buf in
            buf.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buf.count) { archive_entry_copy_pathname(e, $0) }
        }
        archive_entry_set_filetype(e, type)
        archive_entry_set_perm(e, mode_t(meta.mode))
        archive_entry_set_uid(e, meta.uid)
        archive_entry_set_gid(e, meta.gid)
        archive_entry_set_mtime(e, time_t(meta.mtime), meta.nanoseconds)
        for (name, value) in meta.xattrs {
            value.withUnsafeBytes { archive_entry_xattr_add_entry(e, name, $0.baseAddress, $0.count) }
        }
        if type == FileType.reg { archive_entry_set_size(e, la_int64_t(data.count)) }
        configure(e)
        try Self.check(a, archive_write_header(a, e))
        if !data.isEmpty {
            let n = data.withUnsafeBytes { archive_write_data(a, $0.baseAddress, $0.count) }
            #expect(n == data.count)
        }
    }

    func file(_ path: String, _ text: String, mode: UInt16 = 0o644, meta: Meta? = nil) throws {
        try file(Array(path.utf8), Array(text.utf8), mode: mode, meta: meta)
    }

    func file(_ path: [UInt8], _ data: [UInt8], mode: UInt16 = 0o644, meta: Meta? = nil) throws {
        try add(path, type: FileType.reg, meta: meta ?? Meta(mode: mode), data: data)
    }

    /// A regular file whose data has holes: only the `(offset, length)` extents hold data.
    func sparseFile(_ path: String, size: Int, extents: [(Int, Int)], fill: UInt8) throws {
        var data = [UInt8](repeating: 0, count: size)
        for (offset, length) in extents { for i in offset..<(offset + length) { data[i] = fill } }
        try add(Array(path.utf8), type: FileType.reg, meta: Meta(mode: 0o644), data: data) { e in
            for (offset, length) in extents { archive_entry_sparse_add_entry(e, la_int64_t(offset), la_int64_t(length)) }
        }
    }

    func directory(_ path: String, mode: UInt16 = 0o755, meta: Meta? = nil) throws {
        try add(Array(path.utf8), type: FileType.dir, meta: meta ?? Meta(mode: mode))
    }

    func symlink(_ path: String, to target: String) throws {
        try add(Array(path.utf8), type: FileType.lnk, meta: Meta(mode: 0o777)) { e in
            archive_entry_copy_symlink(e, target)
        }
    }

    func hardlink(_ path: String, to target: String) throws {
        try add(Array(path.utf8), type: FileType.reg, meta: Meta(mode: 0o644)) { e in
            archive_entry_copy_hardlink(e, target)
            archive_entry_set_size(e, 0)
        }
    }

    func characterDevice(_ path: String, major: UInt32, minor: UInt32, mode: UInt16 = 0o666) throws {
        try add(Array(path.utf8), type: FileType.chr, meta: Meta(mode: mode)) { e in
            archive_entry_set_rdevmajor(e, dev_t(major))
            archive_entry_set_rdevminor(e, dev_t(minor))
        }
    }

    func blockDevice(_ path: String, major: UInt32, minor: UInt32, mode: UInt16 = 0o660) throws {
        try add(Array(path.utf8), type: FileType.blk, meta: Meta(mode: mode)) { e in
            archive_entry_set_rdevmajor(e, dev_t(major))
            archive_entry_set_rdevminor(e, dev_t(minor))
        }
    }

    func fifo(_ path: String, mode: UInt16 = 0o644) throws {
        try add(Array(path.utf8), type: FileType.ifo, meta: Meta(mode: mode))
    }

    /// `.wh.NAME` beside `path`'s last component.
    func whiteout(_ path: String) throws {
        let (parent, name) = Array(path.utf8).splitParent
        let wh = (parent.isEmpty ? [] : parent + [UInt8(ascii: "/")]) + Array(".wh.".utf8) + name
        try add(wh, type: FileType.reg, meta: Meta(mode: 0o644))
    }

    /// `.wh..wh..opq` inside `directory`.
    func opaque(_ directory: String) throws {
        try file(directory + "/.wh..wh..opq", "")
    }
}

/// A temporary directory for one test, removed by `remove()`.
struct Scratch {
    let path: String

    init() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("d2l-image-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        path = url.path
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }

    /// Writes a tar layer named `name` and returns it as a layer with OCI whiteout semantics.
    func layer(_ name: String, whiteouts: Bool = true, _ body: (TarBuilder) throws -> Void) throws -> LayerSource {
        let file = try TarBuilder.write(path + "/" + name, body)
        return LayerSource(location: .file(file), hasWhiteouts: whiteouts, size: 0, description: name)
    }
}

extension FileTree {
    /// The node at a "/"-separated path written as a String.
    func node(_ path: String) -> TreeNode? { lookup(ImagePath(path)) }

    /// Names in a directory, sorted, as Strings.
    func names(_ path: String) -> [String] {
        (node(path)?.children.keys.map { String(decoding: $0, as: UTF8.self) } ?? []).sorted()
    }
}

/// Scans `layers` the way the builder does (capturing the files BootFacts reads).
func flatten(_ layers: [LayerSource]) throws -> FileTree {
    try LayerFlattener(capturePaths: BootFacts.capturePaths, headNames: BootFacts.headNames).scan(layers)
}

/// The data of every entry in a layer, by path (for checking what a stream delivers).
func contents(of layer: LayerSource) throws -> [String: [UInt8]] {
    let stream = try layer.open()
    var out: [String: [UInt8]] = [:]
    while let entry = try stream.next() {
        if case .regular = entry.kind {
            out[String(decoding: entry.path, as: UTF8.self)] = try stream.readAll(limit: 64 << 20)
        }
    }
    try stream.finish()
    return out
}
