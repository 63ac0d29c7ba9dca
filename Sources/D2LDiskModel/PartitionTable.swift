import Foundation

/// A disk's partition table: a DOS (MBR) table or a GUID partition table (GPT), written by
/// `d2l build` and read back by `d2l verify`, `d2l bisect` and `d2l inspect`.
///
/// The MBR layout is the one every PC BIOS reads (boot code in bytes 0-439, disk signature at 440,
/// four 16-byte entries at 446, 0x55AA at 510). The GPT layout follows the UEFI specification,
/// chapter 5: a protective MBR in LBA 0, the header in LBA 1, 128 entries of 128 bytes from LBA 2,
/// and the backup entries and header in the disk's last 33 sectors.
public struct PartitionTable: Sendable, Equatable {
    public enum Scheme: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
        case mbr, gpt
        public var description: String { rawValue }
    }

    /// What a partition is for on a d2l disk.
    public enum Role: String, Sendable, Codable {
        /// The FAT partition with the kernel, initrd and bootloaders: mounted at /boot, and the
        /// EFI system partition when UEFI boots the disk.
        case boot
        /// The ext4 root file system.
        case root
        case other
    }

    /// A partition type: an MBR type byte or a GPT type GUID.
    public enum PartitionType: Sendable, Hashable, CustomStringConvertible {
        case mbr(UInt8)
        case gpt(GUID)

        public var description: String {
            switch self {
            case .mbr(let byte): return "0x" + String(byte, radix: 16)
            case .gpt(let guid): return guid.description
            }
        }

        public static let fat16LBA = PartitionType.mbr(0x0E)
        public static let fat32LBA = PartitionType.mbr(0x0C)
        public static let mbrEFISystem = PartitionType.mbr(0xEF)
        public static let mbrLinux = PartitionType.mbr(0x83)
        /// EFI system partition (UEFI specification 5.3.3).
        public static let efiSystem = PartitionType.gpt(GUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")!)
        /// Linux file system data (any Linux file system, any mount point).
        public static let linuxData = PartitionType.gpt(GUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")!)
        /// The root partition of each architecture, from the UAPI Discoverable Partitions
        /// Specification: systemd-gpt-auto-generator and systemd-repart find the root by it.
        public static func linuxRoot(_ architecture: Architecture) -> PartitionType {
            switch architecture {
            case .amd64: return .gpt(GUID("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")!)
            case .arm64: return .gpt(GUID("B921B045-1DF0-41C3-AF44-4C6F280D3FAE")!)
            }
        }

        static let mbrFATTypes: Set<UInt8> = [0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E, 0xEF]

        /// The role of a partition of this type on a d2l disk.
        public var role: Role {
            switch self {
            case .mbr(let byte):
                if Self.mbrFATTypes.contains(byte) { return .boot }
                return byte == 0x83 ? .root : .other
            case .gpt:
                if self == .efiSystem { return .boot }
                if self == .linuxData || Architecture.allCases.contains(where: { self == .linuxRoot($0) }) { return .root }
                return .other
            }
        }

        /// Whether UEFI firmware takes a partition of this type for an EFI system partition by its
        /// type (OVMF also reads a FAT partition of another type, such as 0x0C, on an MBR disk).
        public var isEFISystemPartition: Bool { self == .efiSystem || self == .mbrEFISystem }
    }

    public struct Partition: Sendable, Equatable {
        /// 1-based: the MBR entry or GPT entry it is in (`/dev/vdaN`).
        public var number: Int
        public var type: PartitionType
        public var firstSector: UInt64
        public var sectorCount: UInt64
        /// MBR: the active (boot) flag. GPT: attribute bit 2, LegacyBIOSBootable, which syslinux's
        /// gptmbr.bin looks for.
        public var bootable: Bool
        /// GPT: the unique partition GUID (`PARTUUID=`); zero on MBR.
        public var guid: GUID
        /// GPT: the partition name (at most 36 UTF-16 code units).
        public var name: String

        public init(
            number: Int, type: PartitionType, firstSector: UInt64, sectorCount: UInt64, bootable: Bool = false,
            guid: GUID = .zero, name: String = ""
        ) {
            self.number = number
            self.type = type
            self.firstSector = firstSector
            self.sectorCount = sectorCount
            self.bootable = bootable
            self.guid = guid
            self.name = name
        }

        public var role: Role { type.role }
        public var byteOffset: UInt64 { firstSector * 512 }
        public var byteCount: UInt64 { sectorCount * 512 }
    }

    public var scheme: Scheme
    /// MBR: the 32-bit disk signature at byte 440 (also in a GPT disk's protective MBR).
    public var diskSignature: UInt32
    /// GPT: the disk GUID.
    public var diskGUID: GUID
    /// Sectors of 512 bytes in the whole disk (GPT keeps its backup in the last 33).
    public var diskSectors: UInt64
    public var partitions: [Partition]

    public init(
        scheme: Scheme, diskSectors: UInt64, partitions: [Partition], diskSignature: UInt32 = 0, diskGUID: GUID = .zero
    ) {
        self.scheme = scheme
        self.diskSectors = diskSectors
        self.partitions = partitions
        self.diskSignature = diskSignature
        self.diskGUID = diskGUID
    }

    /// The first partition with `role`.
    public func partition(_ role: Role) -> Partition? { partitions.first { $0.role == role } }

    /// The first sector a partition may use: after the GPT entries, rounded to 1 MiB as tools do.
    public static let firstUsableAlignedSector: UInt64 = 2048
    /// Sectors a GPT needs at the end of the disk: 32 for the backup entries, 1 for the backup header.
    public static let gptBackupSectors: UInt64 = 33
    static let gptEntryCount = 128
    static let gptEntrySize = 128

    // MARK: Writing

    /// The sectors that make up the table, each with the LBA to write it at: for MBR, sector 0;
    /// for GPT, the protective MBR, the header, the entries and their backup copies.
    ///
    /// `bootCode` (at most 440 bytes) goes into sector 0: syslinux's mbr.bin for MBR, gptmbr.bin for GPT.
    public func sectors(bootCode: [UInt8]) -> [(lba: UInt64, bytes: [UInt8])] {
        switch scheme {
        case .mbr:
            return [(0, mbrSector(bootCode: bootCode, entries: partitions.prefix(4).map { ($0, $0.type) }))]
        case .gpt:
            return gptSectors(bootCode: bootCode)
        }
    }

    private func mbrSector(bootCode: [UInt8], entries: [(Partition, PartitionType)]) -> [UInt8] {
        var s = [UInt8](repeating: 0, count: 512)
        for (i, b) in bootCode.prefix(440).enumerated() { s[i] = b }
        s.store(diskSignature, at: 440)
        for (n, (p, type)) in entries.prefix(4).enumerated() {
            let base = 446 + n * 16
            s[base] = p.bootable ? 0x80 : 0
            // CHS fields unused by LBA-aware code: the "beyond 1024 cylinders" marker.
            s[base + 1] = 0xfe; s[base + 2] = 0xff; s[base + 3] = 0xff
            if case .mbr(let byte) = type { s[base + 4] = byte }
            s[base + 5] = 0xfe; s[base + 6] = 0xff; s[base + 7] = 0xff
            s.store(UInt32(truncatingIfNeeded: min(p.firstSector, 0xFFFF_FFFF)), at: base + 8)
            s.store(UInt32(truncatingIfNeeded: min(p.sectorCount, 0xFFFF_FFFF)), at: base + 12)
        }
        s[510] = 0x55
        s[511] = 0xaa
        return s
    }

    private func gptSectors(bootCode: [UInt8]) -> [(lba: UInt64, bytes: [UInt8])] {
        let entrySectors = UInt64(Self.gptEntryCount * Self.gptEntrySize / 512)
        var entries = [UInt8](repeating: 0, count: Self.gptEntryCount * Self.gptEntrySize)
        for p in partitions where p.number >= 1 && p.number <= Self.gptEntryCount {
            guard case .gpt(let type) = p.type else { continue }
            let base = (p.number - 1) * Self.gptEntrySize
            entries.replaceSubrange(base..<base + 16, with: type.bytes)
            entries.replaceSubrange(base + 16..<base + 32, with: p.guid.bytes)
            entries.store(p.firstSector, at: base + 32)
            entries.store(p.firstSector + p.sectorCount - 1, at: base + 40)
            entries.store(UInt64(p.bootable ? 1 << 2 : 0), at: base + 48)
            for (i, unit) in p.name.utf16.prefix(36).enumerated() { entries.store(unit, at: base + 56 + i * 2) }
        }
        let entriesCRC = CRC32.checksum(entries)
        let lastLBA = diskSectors - 1
        func header(current: UInt64, backup: UInt64, entriesLBA: UInt64) -> [UInt8] {
            var h = [UInt8](repeating: 0, count: 512)
            h.replaceSubrange(0..<8, with: Array("EFI PART".utf8))
            h.store(UInt32(0x0001_0000), at: 8)  // revision 1.0
            h.store(UInt32(92), at: 12)  // header size
            h.store(current, at: 24)
            h.store(backup, at: 32)
            h.store(2 + entrySectors, at: 40)  // first usable LBA
            h.store(lastLBA - Self.gptBackupSectors, at: 48)  // last usable LBA
            h.replaceSubrange(56..<72, with: diskGUID.bytes)
            h.store(entriesLBA, at: 72)
            h.store(UInt32(Self.gptEntryCount), at: 80)
            h.store(UInt32(Self.gptEntrySize), at: 84)
            h.store(entriesCRC, at: 88)
            h.store(CRC32.checksum(h[0..<92]), at: 16)
            return h
        }
        // The protective MBR: one entry of type 0xEE over the whole disk (UEFI 5.2.3).
        let protective = Partition(
            number: 1, type: .mbr(0xEE), firstSector: 1, sectorCount: min(diskSectors - 1, 0xFFFF_FFFF))
        var out: [(lba: UInt64, bytes: [UInt8])] = [
            (0, mbrSector(bootCode: bootCode, entries: [(protective, protective.type)])),
            (1, header(current: 1, backup: lastLBA, entriesLBA: 2)),
        ]
        let backupEntriesLBA = lastLBA - entrySectors
        for sector in 0..<Int(entrySectors) {
            let chunk = Array(entries[sector * 512..<(sector + 1) * 512])
            out.append((2 + UInt64(sector), chunk))
            out.append((backupEntriesLBA + UInt64(sector), chunk))
        }
        out.append((lastLBA, header(current: lastLBA, backup: 1, entriesLBA: backupEntriesLBA)))
        return out
    }

    /// Writes the table into the disk file at `path` (which must already have its full size).
    ///
    /// - Throws: `DiskModelError.io` when the file cannot be opened or written.
    public func write(toDisk path: String, bootCode: [UInt8]) throws(DiskModelError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        for (lba, bytes) in sectors(bootCode: bootCode) {
            let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(lba * 512)) }
            guard written == bytes.count else { throw .io(path: path, reason: String(cString: strerror(errno))) }
        }
    }

    // MARK: Reading

    /// Reads the table of the raw disk at `path`: a GPT when sector 0 is a protective MBR and
    /// LBA 1 holds a valid GPT header, else the MBR; nil when sector 0 has no 0x55AA signature.
    ///
    /// - Throws: `DiskModelError.unreadable` when the file cannot be read, `.corruptTable` when a GPT
    ///   header or entry array fails its CRC-32.
    ///
    /// - Throws: `DiskModelError.corruptTable` when a GPT header or entry array fails its checks.
    public static func read(path: String) throws(DiskModelError) -> PartitionTable? {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw .unreadable(path: path, reason: "cannot open it for reading")
        }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        return try read(diskBytes: size, path: path) { offset, count in
            guard (try? handle.seek(toOffset: offset)) != nil, let data = try? handle.read(upToCount: count),
                data.count == count
            else { return nil }
            return [UInt8](data)
        }
    }

    /// Reads a table through `readAt(offset, count)`, which returns nil past the end.
    public static func read(
        diskBytes: UInt64, path: String, readAt: (UInt64, Int) -> [UInt8]?
    ) throws(DiskModelError) -> PartitionTable? {
        guard let mbr = readAt(0, 512), mbr[510] == 0x55, mbr[511] == 0xAA else { return nil }
        let signature = mbr.load(UInt32.self, at: 440)
        var partitions: [Partition] = []
        for n in 0..<4 {
            let base = 446 + n * 16
            let type = mbr[base + 4]
            guard type != 0 else { continue }
            partitions.append(
                Partition(
                    number: n + 1, type: .mbr(type), firstSector: UInt64(mbr.load(UInt32.self, at: base + 8)),
                    sectorCount: UInt64(mbr.load(UInt32.self, at: base + 12)), bootable: mbr[base] == 0x80))
        }
        let mbrTable = PartitionTable(
            scheme: .mbr, diskSectors: diskBytes / 512, partitions: partitions, diskSignature: signature)
        guard partitions.contains(where: { $0.type == .mbr(0xEE) }), let header = readAt(512, 512),
            header.starts(with: Array("EFI PART".utf8))
        else { return mbrTable }
        let headerSize = Int(header.load(UInt32.self, at: 12))
        guard (92...512).contains(headerSize) else { throw .corruptTable(path: path, reason: "GPT header size \(headerSize)") }
        var zeroed = Array(header[0..<headerSize])
        zeroed.store(UInt32(0), at: 16)
        guard CRC32.checksum(zeroed) == header.load(UInt32.self, at: 16) else {
            throw .corruptTable(path: path, reason: "the GPT header's CRC-32 does not match")
        }
        let entriesLBA = header.load(UInt64.self, at: 72)
        let count = Int(header.load(UInt32.self, at: 80))
        let entrySize = Int(header.load(UInt32.self, at: 84))
        guard (1...1024).contains(count), entrySize >= 128, entrySize <= 1024, entrySize % 8 == 0,
            let entries = readAt(entriesLBA * 512, count * entrySize)
        else { throw .corruptTable(path: path, reason: "the GPT entry array lies outside the disk") }
        guard CRC32.checksum(entries) == header.load(UInt32.self, at: 88) else {
            throw .corruptTable(path: path, reason: "the GPT entry array's CRC-32 does not match")
        }
        var gptPartitions: [Partition] = []
        for index in 0..<count {
            let base = index * entrySize
            guard let type = GUID(bytes: entries[base..<base + 16]), type != .zero,
                let unique = GUID(bytes: entries[base + 16..<base + 32])
            else { continue }
            let first = entries.load(UInt64.self, at: base + 32)
            let last = entries.load(UInt64.self, at: base + 40)
            guard last >= first else { continue }
            let attributes = entries.load(UInt64.self, at: base + 48)
            var units: [UInt16] = []
            for i in 0..<36 {
                let unit = entries.load(UInt16.self, at: base + 56 + i * 2)
                if unit == 0 { break }
                units.append(unit)
            }
            gptPartitions.append(
                Partition(
                    number: index + 1, type: .gpt(type), firstSector: first, sectorCount: last - first + 1,
                    bootable: attributes & (1 << 2) != 0, guid: unique, name: String(decoding: units, as: UTF16.self)))
        }
        return PartitionTable(
            scheme: .gpt, diskSectors: header.load(UInt64.self, at: 32) + 1, partitions: gptPartitions,
            diskSignature: signature, diskGUID: GUID(bytes: header[56..<72]) ?? .zero)
    }
}

extension Array where Element == UInt8 {
    /// Stores `value` little-endian at `offset`.
    mutating func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        Swift.withUnsafeBytes(of: value.littleEndian) { raw in
            for (i, byte) in raw.enumerated() { self[offset + i] = byte }
        }
    }

    /// Loads a little-endian integer at `offset`.
    func load<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        var value: T = 0
        for i in 0..<MemoryLayout<T>.size { value |= T(self[offset + i]) << (8 * i) }
        return value
    }
}
