import D2LSupport
import Foundation

/// The FAT boot partition: made with mkfs.vfat, filled with mtools, and made
/// bootable with syslinux's mtools installer, all on plain files.
struct BootPartition {
    var diskPath: String
    var partition: PartitionTable.Partition
    var volumeID: UInt32
    var scratch: String

    static let mbrCandidates = [
        "/usr/lib/syslinux/mbr/mbr.bin", "/usr/share/syslinux/mbr.bin", "/usr/lib/SYSLINUX/mbr.bin",
        "/usr/share/syslinux/mbr/mbr.bin",
    ]

    static func mbrCode() throws -> [UInt8] {
        for path in mbrCandidates {
            if let data = FileManager.default.contents(atPath: path), data.count >= 400 { return Array(data.prefix(440)) }
        }
        throw DiskError.tool("syslinux's mbr.bin was not found (install syslinux-common)")
    }

    /// The FAT type for a partition of this size: FAT16 while small, FAT32 beyond.
    static func fatBits(forBytes bytes: Int64) -> Int { bytes < 512 << 20 ? 16 : 32 }

    private var mtoolsTarget: String { "\(diskPath)@@\(partition.byteOffset)" }
    private var env: [String: String] { ["MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"] }

    /// Formats the partition in place.
    func format(epoch: Int64?) throws {
        let fatFile = scratch + "/boot.fat"
        try? FileManager.default.removeItem(atPath: fatFile)
        var args = [
            "mkfs.vfat", "-F", "\(Self.fatBits(forBytes: partition.byteCount))", "-n", "BOOT",
            "-i", String(format: "%08X", volumeID), "-h", "\(partition.startSector)",
        ]
        if epoch != nil { args.append("--invariant") }
        args += ["-C", fatFile, "\(partition.byteCount / 1024)"]
        try ProcessRunner.run(args)
        try SparseCopy.copy(from: fatFile, to: diskPath, at: partition.byteOffset)
        try? FileManager.default.removeItem(atPath: fatFile)
    }

    /// Creates a directory on the partition.
    func mkdir(_ path: String) throws {
        try ProcessRunner.run(["mmd", "-i", mtoolsTarget, "::/" + path], environment: env)
    }

    /// Copies host files onto the partition (`destination` relative to its root).
    func copy(_ source: String, to destination: String) throws {
        try ProcessRunner.run(["mcopy", "-o", "-m", "-i", mtoolsTarget, source, "::/" + destination], environment: env)
    }

    /// Copies several host files into a directory of the partition in one mcopy run.
    func copy(_ sources: [String], toDirectory destination: String) throws {
        try ProcessRunner.run(
            ["mcopy", "-o", "-m", "-i", mtoolsTarget] + sources + ["::/" + destination], environment: env)
    }

    /// Installs syslinux (boot sector + ldlinux.sys) into /syslinux.
    func installSyslinux() throws {
        try ProcessRunner.run([
            "syslinux", "--install", "--offset", "\(partition.byteOffset)", "--directory", "/syslinux", diskPath,
        ])
    }
}

/// Copies a file into another at an offset, leaving zero blocks as holes.
enum SparseCopy {
    static func copy(from source: String, to destination: String, at offset: Int64) throws {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw DiskError.io(source, message: String(cString: strerror(errno))) }
        defer { close(input) }
        let output = open(destination, O_WRONLY | O_CLOEXEC)
        guard output >= 0 else { throw DiskError.io(destination, message: String(cString: strerror(errno))) }
        defer { close(output) }
        let size = 1 << 20
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        defer { buffer.deallocate() }
        var position: Int64 = 0
        while true {
            let n = pread(input, buffer, size, off_t(position))
            if n < 0 { throw DiskError.io(source, message: String(cString: strerror(errno))) }
            if n == 0 { break }
            var chunk = 0
            while chunk < n {
                let len = min(4096, n - chunk)
                let block = UnsafeRawBufferPointer(start: buffer + chunk, count: len)
                if block.contains(where: { $0 != 0 }) {
                    guard pwrite(output, buffer + chunk, len, off_t(offset + position) + off_t(chunk)) == len else {
                        throw DiskError.io(destination, message: String(cString: strerror(errno)))
                    }
                }
                chunk += len
            }
            position += Int64(n)
        }
    }
}
