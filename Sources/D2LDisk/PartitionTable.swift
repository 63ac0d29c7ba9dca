import Foundation

/// A DOS (MBR) partition table with syslinux's boot code.
public struct PartitionTable: Sendable {
    public struct Partition: Sendable, Equatable {
        public var type: UInt8
        public var bootable: Bool
        public var startSector: UInt64
        public var sectorCount: UInt64
        public var byteOffset: Int64 { Int64(startSector) * 512 }
        public var byteCount: Int64 { Int64(sectorCount) * 512 }
    }

    public var partitions: [Partition]
    public var diskSignature: UInt32

    public static let fat16LBA: UInt8 = 0x0e
    public static let fat32LBA: UInt8 = 0x0c
    public static let linux: UInt8 = 0x83

    public init(partitions: [Partition], diskSignature: UInt32) {
        self.partitions = partitions
        self.diskSignature = diskSignature
    }

    /// The 512-byte sector: `bootCode` (up to 440 bytes), signature, entries, 0x55AA.
    public func sector(bootCode: [UInt8]) -> [UInt8] {
        var s = [UInt8](repeating: 0, count: 512)
        for (i, b) in bootCode.prefix(440).enumerated() { s[i] = b }
        withUnsafeBytes(of: diskSignature.littleEndian) { for (i, b) in $0.enumerated() { s[440 + i] = b } }
        for (n, p) in partitions.prefix(4).enumerated() {
            let base = 446 + n * 16
            s[base] = p.bootable ? 0x80 : 0
            // CHS fields unused by LBA-aware code: the "beyond 1024 cylinders" marker.
            s[base + 1] = 0xfe; s[base + 2] = 0xff; s[base + 3] = 0xff
            s[base + 4] = p.type
            s[base + 5] = 0xfe; s[base + 6] = 0xff; s[base + 7] = 0xff
            withUnsafeBytes(of: UInt32(p.startSector).littleEndian) {
                for (i, b) in $0.enumerated() { s[base + 8 + i] = b }
            }
            withUnsafeBytes(of: UInt32(p.sectorCount).littleEndian) {
                for (i, b) in $0.enumerated() { s[base + 12 + i] = b }
            }
        }
        s[510] = 0x55
        s[511] = 0xaa
        return s
    }

    /// Reads the table back from a disk image's first sector.
    public static func read(_ sector: [UInt8]) -> PartitionTable? {
        guard sector.count >= 512, sector[510] == 0x55, sector[511] == 0xaa else { return nil }
        func u32(_ o: Int) -> UInt32 {
            UInt32(sector[o]) | UInt32(sector[o + 1]) << 8 | UInt32(sector[o + 2]) << 16 | UInt32(sector[o + 3]) << 24
        }
        var parts: [Partition] = []
        for n in 0..<4 {
            let base = 446 + n * 16
            guard sector[base + 4] != 0 else { continue }
            parts.append(
                Partition(
                    type: sector[base + 4], bootable: sector[base] == 0x80, startSector: UInt64(u32(base + 8)),
                    sectorCount: UInt64(u32(base + 12))))
        }
        return PartitionTable(partitions: parts, diskSignature: u32(440))
    }
}
