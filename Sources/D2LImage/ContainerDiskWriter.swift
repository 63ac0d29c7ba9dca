import CArchive
import D2LSupport
import Foundation

/// Writes a KubeVirt containerDisk: an OCI image archive (OCI image layout in a tar, as
/// `podman save --format oci-archive` writes) of a scratch image with one layer that holds the disk
/// at `/disk/NAME`, owned by UID and GID 107 (the qemu user of KubeVirt's virt-launcher) and readable
/// by it, as KubeVirt's containerDisk documentation asks.
///
/// The layer is an uncompressed tar (a qcow2 is already compact); every time in it is `mtime`, so the
/// same disk and time give the same bytes and digests.
public enum ContainerDiskWriter {
    /// The owner KubeVirt expects of the disk.
    public static let owner: UInt32 = 107

    /// Packs the disk file at `disk` as `/disk/<name>` into an OCI archive at `output`.
    ///
    /// - Throws: `ImageError.archive` with libarchive's message when a tar cannot be written, or the
    ///   file system's error when the disk cannot be read or the scratch files written.
    public static func write(
        disk: String, name: String, architecture: String, mtime: Int64, output: String, scratch: String
    ) throws {
        // 1. The layer: /disk/ and /disk/NAME.
        let layerPath = scratch + "/layer.tar"
        var st = stat()
        guard stat(disk, &st) == 0 else { throw ImageError.notFound(disk) }
        try TarFile.write(to: layerPath, entries: [
            .init(path: "disk/", kind: .directory, mode: 0o555, owner: owner, mtime: mtime),
            .init(path: "disk/" + name, kind: .file(disk, size: Int64(st.st_size)), mode: 0o440, owner: owner, mtime: mtime),
        ])
        let layerDigest = try SHA256Hasher.hex(ofFile: layerPath)
        let layerSize = try FileManager.default.attributesOfItem(atPath: layerPath)[.size] as? Int64 ?? 0
        // 2. The config and the manifest (OCI image spec, config.md and manifest.md).
        let created = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(mtime)))
        let config = """
            {"architecture":"\(architecture)","created":"\(created)","os":"linux","config":{},\
            "rootfs":{"type":"layers","diff_ids":["sha256:\(layerDigest)"]},\
            "history":[{"created":"\(created)","created_by":"d2l build --format containerdisk"}]}
            """
        let configData = Data(config.utf8)
        let configDigest = SHA256Hasher.hex(configData)
        let manifest = """
            {"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",\
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:\(configDigest)","size":\(configData.count)},\
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:\(layerDigest)","size":\(layerSize)}]}
            """
        let manifestData = Data(manifest.utf8)
        let manifestDigest = SHA256Hasher.hex(manifestData)
        let index = """
            {"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[\
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:\(manifestDigest)",\
            "size":\(manifestData.count),"platform":{"architecture":"\(architecture)","os":"linux"}}]}
            """
        // 3. The archive: an OCI image layout.
        try TarFile.write(to: output, entries: [
            .init(path: "oci-layout", kind: .data(Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8)), mtime: mtime),
            .init(path: "index.json", kind: .data(Data(index.utf8)), mtime: mtime),
            .init(path: "blobs/", kind: .directory, mtime: mtime),
            .init(path: "blobs/sha256/", kind: .directory, mtime: mtime),
            .init(path: "blobs/sha256/" + configDigest, kind: .data(configData), mtime: mtime),
            .init(path: "blobs/sha256/" + manifestDigest, kind: .data(manifestData), mtime: mtime),
            .init(path: "blobs/sha256/" + layerDigest, kind: .file(layerPath, size: layerSize), mtime: mtime),
        ])
    }
}

/// A POSIX (pax) tar written with libarchive.
enum TarFile {
    struct Entry {
        enum Kind {
            case directory
            case data(Data)
            case file(String, size: Int64)
        }
        var path: String
        var kind: Kind
        var mode: UInt16 = 0o644
        var owner: UInt32 = 0
        var mtime: Int64
    }

    static func write(to path: String, entries: [Entry]) throws {
        guard let archive = archive_write_new() else { throw ImageError.archive(path, message: "out of memory") }
        defer { archive_write_free(archive) }
        func check(_ code: Int32) throws {
            guard code < ARCHIVE_OK else { return }
            throw ImageError.archive(path, message: ArchiveStream.message(archive))
        }
        try check(archive_write_set_format_pax_restricted(archive))
        try check(archive_write_open_filename(archive, path))
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        for item in entries {
            guard let entry = archive_entry_new() else { throw ImageError.archive(path, message: "out of memory") }
            defer { archive_entry_free(entry) }
            archive_entry_set_pathname(entry, item.path)
            archive_entry_set_uid(entry, Int64(item.owner))
            archive_entry_set_gid(entry, Int64(item.owner))
            archive_entry_set_mtime(entry, time_t(item.mtime), 0)
            switch item.kind {
            case .directory:
                archive_entry_set_filetype(entry, 0o040000)  // AE_IFDIR
                archive_entry_set_perm(entry, mode_t(item.mode == 0o644 ? 0o755 : item.mode))
                try check(archive_write_header(archive, entry))
            case .data(let data):
                archive_entry_set_filetype(entry, 0o100000)  // AE_IFREG
                archive_entry_set_perm(entry, mode_t(item.mode))
                archive_entry_set_size(entry, Int64(data.count))
                try check(archive_write_header(archive, entry))
                let written = data.withUnsafeBytes { archive_write_data(archive, $0.baseAddress, $0.count) }
                guard written == data.count else { throw ImageError.archive(path, message: ArchiveStream.message(archive)) }
            case .file(let source, let size):
                archive_entry_set_filetype(entry, 0o100000)  // AE_IFREG
                archive_entry_set_perm(entry, mode_t(item.mode))
                archive_entry_set_size(entry, size)
                try check(archive_write_header(archive, entry))
                let fd = open(source, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw ImageError.archive(source, message: String(cString: strerror(errno))) }
                defer { close(fd) }
                while true {
                    let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    if n == 0 { break }
                    guard n > 0 else { throw ImageError.archive(source, message: String(cString: strerror(errno))) }
                    let written = buffer.withUnsafeBytes { archive_write_data(archive, $0.baseAddress, n) }
                    guard written == n else { throw ImageError.archive(path, message: ArchiveStream.message(archive)) }
                }
            }
        }
        try check(archive_write_close(archive))
    }
}
