import CLibvirt
import D2LDiskModel
import D2LSupport
import Foundation
import Synchronization

/// A disk uploaded into a storage pool of a libvirt daemon on another host, so that its QEMU can
/// open it there.
///
/// The volume is named by the disk's content, `d2l-<first 16 hex digits of its SHA-256>.<ext>`, so
/// boots of the same disk on the same host upload it once. Policy: the process that uploads a volume
/// removes it when it is done with it (`RemoteUploads.removeAll`, run at the end of d2l verify,
/// d2l bisect and d2l test, and on SIGINT/SIGTERM/SIGHUP); a process that finds the volume already
/// there uses it and leaves it to its uploader. A SIGKILL leaves the volume on the host: the next
/// d2l that needs the same disk there uses it, and `virsh vol-delete` removes it.
///
/// The upload goes to a name of its own first (`….part-<pid>-<random>`), and is cloned on the host
/// into the final name once complete (virStorageVolCreateXMLFrom), so that a reader never boots a
/// volume still being written. It is sparse where the daemon supports it
/// (VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM, libvirt 3.4): holes found with SEEK_DATA/SEEK_HOLE
/// (lseek(2)) are sent as holes, not zeros.
public struct RemoteDisk: Sendable {
    /// The volume's path on the daemon's host, for the domain XML.
    public var path: String
    /// The volume's name in its pool.
    public var name: String
    /// True when this process uploaded it (and so removes it).
    public var uploaded: Bool

    /// The name a disk's volume gets: `d2l-<16 hex digits of its SHA-256>.<raw|qcow2|...>`.
    public static func volumeName(digest: String, format: DiskFormat) -> String {
        "d2l-\(digest.prefix(16)).\(format.qemuFormat)"
    }
}

/// The volumes this process uploaded, removed at its end.
public final class RemoteUploads: Sendable {
    public static let shared = RemoteUploads()

    private struct Upload: @unchecked Sendable {
        var connection: LibvirtConnection
        var pool: String
        var name: String
    }
    private let uploads = Mutex<[String: Upload]>([:])
    /// The disks already placed, by connection URI, pool and image path: one upload per run.
    private let placed = Mutex<[String: RemoteDisk]>([:])
    private let cleanupToken = Mutex<Int?>(nil)

    /// The disk at `path` on the host of `connection`, in storage pool `pool`: found there by its
    /// content's name, or uploaded (and then removed by `removeAll`).
    ///
    /// - Throws: `VerifyError.hypervisor` when the pool does not exist or is inactive (saying how to
    ///   make one); `LibvirtError` when the upload or the clone fails (nothing is left then).
    public func place(
        _ path: String, format: DiskFormat, pool poolName: String, on connection: LibvirtConnection,
        note: @Sendable (String) -> Void = { _ in }
    ) throws -> RemoteDisk {
        let key = "\(connection.uri)\u{0}\(poolName)\u{0}\(path)"
        if let done = placed.withLock({ $0[key] }) { return done }
        let pool = try connection.storagePool(named: poolName)
        let started = ContinuousClock.now
        let digest = try SHA256Hasher.hex(ofFile: path)
        let name = RemoteDisk.volumeName(digest: digest, format: format)
        if let existing = pool.volume(named: name) {
            note("\(name) is already in pool \(poolName) on \(connection.uri): not uploaded again")
            let disk = RemoteDisk(path: try existing.path(), name: name, uploaded: false)
            placed.withLock { $0[key] = disk }
            return disk
        }
        let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as? UInt64 ?? 0
        note("uploading \(path) (\(size >> 20) MiB, sparse) to pool \(poolName) on \(connection.uri) as \(name)")
        let part = name + ".part-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        let partial = try pool.createVolume(name: part, capacity: size, format: format)
        // From here the partial volume, then the final one, must go on every way out.
        register(connection: connection, pool: poolName, name: part)
        defer {
            partial.delete()
            forget(connection: connection, pool: poolName, name: part)
        }
        try partial.upload(from: path, size: size)
        register(connection: connection, pool: poolName, name: name)
        let final: StorageVolume
        do {
            final = try pool.cloneVolume(partial, name: name, capacity: size, format: format)
        } catch {
            forget(connection: connection, pool: poolName, name: name)
            throw error
        }
        note("uploaded \(name) in \(String(format: "%.1f", (ContinuousClock.now - started).seconds)) s")
        let disk = RemoteDisk(path: try final.path(), name: name, uploaded: true)
        placed.withLock { $0[key] = disk }
        return disk
    }

    private func register(connection: LibvirtConnection, pool: String, name: String) {
        uploads.withLock { $0["\(connection.uri)\u{0}\(pool)\u{0}\(name)"] = Upload(connection: connection, pool: pool, name: name) }
        cleanupToken.withLock { token in
            if token == nil { token = Cleanup.shared.addAction { RemoteUploads.shared.removeAll() } }
        }
    }

    private func forget(connection: LibvirtConnection, pool: String, name: String) {
        _ = uploads.withLock { $0.removeValue(forKey: "\(connection.uri)\u{0}\(pool)\u{0}\(name)") }
    }

    private let removing = NSLock()

    /// Deletes every volume this process uploaded and has not deleted yet.
    public func removeAll() {
        // Held for the whole removal: a signal's cleanup that comes while the main flow is deleting
        // waits for it to finish instead of finding the list empty and exiting under it.
        removing.lock()
        defer { removing.unlock() }
        let all = uploads.withLock { uploads in
            defer { uploads.removeAll() }
            return Array(uploads.values)
        }
        placed.withLock { $0.removeAll() }
        for upload in all {
            let pool = try? upload.connection.storagePool(named: upload.pool)
            guard let volume = pool?.volume(named: upload.name) else { continue }
            // A volume still held a moment by a domain being destroyed: once more after a second.
            if !volume.delete() {
                Thread.sleep(forTimeInterval: 1)
                if !volume.delete() {
                    FileHandle.standardError.write(Data(
                        ("d2l: could not remove volume \(upload.name) from pool \(upload.pool) on \(upload.connection.uri): "
                            + "\(LibvirtError.last("deleting it").description); remove it with virsh vol-delete\n").utf8))
                }
            }
        }
    }
}

/// A libvirt storage pool (`@unchecked Sendable` as the connection: an immutable thread-safe handle).
final class StoragePool: @unchecked Sendable {
    fileprivate let pointer: virStoragePoolPtr
    let name: String

    fileprivate init(pointer: virStoragePoolPtr, name: String) {
        self.pointer = pointer
        self.name = name
    }
    deinit { virStoragePoolFree(pointer) }

    /// The volume named `name`, nil when there is none (after refreshing the pool's list).
    func volume(named name: String) -> StorageVolume? {
        _ = virStoragePoolRefresh(pointer, 0)
        return virStorageVolLookupByName(pointer, name).map { StorageVolume(pointer: $0, name: name) }
    }

    private static func volumeXML(name: String, capacity: UInt64, format: DiskFormat) -> String {
        """
        <volume>
          <name>\(XMLText.escape(name))</name>
          <capacity unit='bytes'>\(capacity)</capacity>
          <allocation unit='bytes'>0</allocation>
          <target><format type='\(XMLText.escape(format.qemuFormat))'/><permissions><mode>0644</mode></permissions></target>
        </volume>
        """
    }

    /// - Throws: `LibvirtError` with libvirt's message.
    func createVolume(name: String, capacity: UInt64, format: DiskFormat) throws -> StorageVolume {
        guard let volume = virStorageVolCreateXML(pointer, Self.volumeXML(name: name, capacity: capacity, format: format), 0) else {
            throw LibvirtError.last("creating volume \(name) in pool \(self.name)")
        }
        return StorageVolume(pointer: volume, name: name)
    }

    /// A copy of `source` made on the host (sparse where the pool's backend copies sparsely).
    ///
    /// - Throws: `LibvirtError` with libvirt's message.
    func cloneVolume(_ source: StorageVolume, name: String, capacity: UInt64, format: DiskFormat) throws -> StorageVolume {
        let xml = Self.volumeXML(name: name, capacity: capacity, format: format)
        guard let volume = virStorageVolCreateXMLFrom(pointer, xml, source.pointer, 0) else {
            throw LibvirtError.last("copying \(source.name) to \(name) in pool \(self.name)")
        }
        return StorageVolume(pointer: volume, name: name)
    }
}

/// A volume in a storage pool.
final class StorageVolume: @unchecked Sendable {
    fileprivate let pointer: virStorageVolPtr
    let name: String

    fileprivate init(pointer: virStorageVolPtr, name: String) {
        self.pointer = pointer
        self.name = name
    }
    deinit { virStorageVolFree(pointer) }

    /// The volume's path on its host.
    ///
    /// - Throws: `LibvirtError` with libvirt's message.
    func path() throws -> String {
        guard let text = virStorageVolGetPath(pointer) else { throw LibvirtError.last("finding volume \(name)'s path") }
        defer { free(text) }
        return String(cString: text)
    }

    /// Deletes the volume; false when libvirt refused (its error is then `LibvirtError.last`).
    @discardableResult
    func delete() -> Bool { virStorageVolDelete(pointer, 0) == 0 }

    /// Sends the file's `size` bytes into the volume over a libvirt stream, holes as holes.
    ///
    /// - Throws: `VerifyError.hypervisor` when the file cannot be opened; `LibvirtError` when libvirt fails.
    func upload(from path: String, size: UInt64) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VerifyError.hypervisor("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard let connection = virStorageVolGetConnect(pointer), let stream = virStreamNew(connection, 0) else {
            throw LibvirtError.last("opening a stream to volume \(name)")
        }
        defer { virStreamFree(stream) }
        let source = UploadSource(fd: fd, size: Int64(size))
        let context = Unmanaged.passRetained(source)
        defer { context.release() }
        let sparse = UInt32(VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM.rawValue)
        try LibvirtError.check(virStorageVolUpload(pointer, stream, 0, size, sparse), "uploading to volume \(name)")
        let sent = virStreamSparseSendAll(
            stream,
            { _, data, count, opaque in
                let source = Unmanaged<UploadSource>.fromOpaque(opaque!).takeUnretainedValue()
                return Int32(source.read(into: data!, count: count))
            },
            { _, inData, length, opaque in
                let source = Unmanaged<UploadSource>.fromOpaque(opaque!).takeUnretainedValue()
                guard let (data, bytes) = source.section() else { return -1 }
                inData!.pointee = data ? 1 : 0
                length!.pointee = bytes
                return 0
            },
            { _, length, opaque in
                Unmanaged<UploadSource>.fromOpaque(opaque!).takeUnretainedValue().position += length
                return 0
            },
            context.toOpaque())
        if sent < 0 {
            let error = LibvirtError.last("uploading to volume \(name)")
            _ = virStreamAbort(stream)
            throw error
        }
        try LibvirtError.check(virStreamFinish(stream), "finishing the upload to volume \(name)")
    }
}

/// The file an upload reads, and where it is.
private final class UploadSource {
    /// lseek(2)'s SEEK_DATA and SEEK_HOLE (Linux 3.1; _GNU_SOURCE macros Swift does not see).
    static let seekData: Int32 = 3
    static let seekHole: Int32 = 4

    let fd: Int32
    let size: Int64
    var position: Int64 = 0

    init(fd: Int32, size: Int64) {
        self.fd = fd
        self.size = size
    }

    func read(into buffer: UnsafeMutablePointer<CChar>, count: Int) -> Int {
        let want = Int(min(Int64(count), size - position))
        guard want > 0 else { return 0 }
        let got = pread(fd, buffer, want, off_t(position))
        if got > 0 { position += Int64(got) }
        return got
    }

    /// Whether the file holds data or a hole at the current position, and for how many bytes.
    func section() -> (data: Bool, bytes: Int64)? {
        guard position < size else { return (false, 0) }
        let data = lseek(fd, off_t(position), Self.seekData)
        if data < 0 { return errno == ENXIO ? (false, size - position) : (true, size - position) }
        if data > position { return (false, Int64(data) - position) }
        let hole = lseek(fd, off_t(position), Self.seekHole)
        return (true, (hole < 0 ? size : min(Int64(hole), size)) - position)
    }
}

extension LibvirtConnection {
    /// The active storage pool `name` on the connection's host.
    ///
    /// - Throws: `VerifyError.hypervisor` naming the pool, and how to make one, when it is missing or inactive.
    func storagePool(named name: String) throws -> StoragePool {
        guard let pool = virStoragePoolLookupByName(pointer, name) else {
            throw VerifyError.hypervisor(
                "\(uri) has no storage pool '\(name)' to upload the disk to: make one on that host "
                    + "(virsh pool-define-as \(name) dir --target /var/lib/libvirt/images && virsh pool-start \(name)), "
                    + "or name another with --storage-pool")
        }
        let made = StoragePool(pointer: pool, name: name)
        guard virStoragePoolIsActive(pool) == 1 else {
            throw VerifyError.hypervisor("\(uri): storage pool '\(name)' is not active (virsh pool-start \(name))")
        }
        return made
    }
}
