import D2LExt4
import D2LSupport
import Foundation

/// What a disk's root file system says about the system on it.
public struct GuestFacts: Sendable, Codable, Equatable {
    public var osRelease: OSRelease?
    public var initSystem: InitSystem
    /// The chain `/sbin/init` resolves through, inside the image.
    public var initChain: [String]
    /// The architecture of the init program (its ELF header), when d2l boots it.
    public var architecture: Architecture?

    public init(
        osRelease: OSRelease? = nil, initSystem: InitSystem = .unknown, initChain: [String] = [],
        architecture: Architecture? = nil
    ) {
        self.osRelease = osRelease
        self.initSystem = initSystem
        self.initChain = initChain
        self.architecture = architecture
    }

    public var prettyName: String? { osRelease.map(\.name).flatMap { $0.isEmpty ? nil : $0 } }

    /// Reads the facts from an ext4 root: os-release(5), where /sbin/init leads and what it is.
    public init(reading root: Ext4Reader) {
        osRelease = OSRelease.paths.lazy.compactMap { root.read("/" + $0) }.first.map { OSRelease(parsing: $0) }
        initChain = root.resolveChain("/sbin/init")
        initSystem = InitSystem.classify(
            initChain: initChain, inittab: root.read("/etc/inittab").map { String(decoding: $0, as: UTF8.self) },
            hasOpenRC: root.exists("/sbin/openrc"))
        architecture = initChain.last.flatMap { root.read($0, limit: 64) }.flatMap { Architecture(elfHeader: $0) }
    }
}

/// A disk image opened once: its format, its partition table and each partition's role, the root
/// file system's UUID, and the facts its root gives (os-release, init, architecture).
///
/// `d2l build` writes these; `d2l verify`, `d2l bisect` and `d2l inspect` read them here. Only raw
/// disks are looked into: for qcow2 and the other formats the table and root are nil.
public struct DiskImage: Sendable {
    public let path: String
    public let format: DiskFormat
    public let table: PartitionTable?
    /// The byte offset of the root file system: its partition's, or 0 for a bare file system.
    public let rootOffset: UInt64?
    /// The root file system's UUID (its superblock's), when readable.
    public let rootUUID: String?
    /// The root's facts, nil when no ext2/3/4 root could be read.
    public let guest: GuestFacts?

    /// Opens the disk at `path` and reads what it can.
    ///
    /// - Throws: `DiskModelError.unreadable` when the file is missing or unreadable,
    ///   `.corruptTable` when its GPT fails its checks. A disk whose root cannot be read is not an
    ///   error: `guest` and `rootUUID` are then nil.
    public static func open(_ path: String) throws(DiskModelError) -> DiskImage {
        guard FileManager.default.fileExists(atPath: path) else {
            throw .unreadable(path: path, reason: "no such file: pass the disk image that d2l build wrote")
        }
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw .unreadable(path: path, reason: "not readable")
        }
        let format = try DiskFormat.detect(path: path)
        guard format == .raw else {
            return DiskImage(path: path, format: format, table: nil, rootOffset: nil, rootUUID: nil, guest: nil)
        }
        let table = try PartitionTable.read(path: path)
        var offset = table?.partition(.root)?.byteOffset
        if offset == nil, Self.hasExtSuperblock(path: path, at: 0) { offset = 0 }
        let reader = offset.flatMap { try? Ext4Reader(path: path, offset: $0) }
        return DiskImage(
            path: path, format: format, table: table, rootOffset: offset, rootUUID: reader?.uuid,
            guest: reader.map { GuestFacts(reading: $0) })
    }

    public init(
        path: String, format: DiskFormat, table: PartitionTable?, rootOffset: UInt64?, rootUUID: String?,
        guest: GuestFacts?
    ) {
        self.path = path
        self.format = format
        self.table = table
        self.rootOffset = rootOffset
        self.rootUUID = rootUUID
        self.guest = guest
    }

    /// The root partition, when the disk has a table with one.
    public var rootPartition: PartitionTable.Partition? { table?.partition(.root) }
    /// The FAT boot partition (also the EFI system partition), when the disk has one.
    public var bootPartition: PartitionTable.Partition? { table?.partition(.boot) }

    /// The kernel's `root=` for booting this disk's root with an outside kernel on `device`
    /// (`/dev/vda`): with an initrd, the root's `UUID=` when it is known; without one the kernel
    /// itself must find the root and knows no UUID=, so the partition's device name (`/dev/vda2`,
    /// partition 2 when the table cannot be read, as d2l build lays disks out).
    public func rootArgument(device: String, initrd: Bool) -> String {
        if initrd, let rootUUID { return "UUID=\(rootUUID)" }
        return device + String(rootPartition?.number ?? 2)
    }

    /// Whether an ext2/3/4 superblock (magic 0xEF53 at byte 56 of the 1024 bytes at 1024) lies at `offset`.
    static func hasExtSuperblock(path: String, at offset: UInt64) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        guard (try? handle.seek(toOffset: offset + 1024 + 56)) != nil, let magic = try? handle.read(upToCount: 2) else {
            return false
        }
        return [UInt8](magic) == [0x53, 0xEF]
    }
}
