import D2LDiskModel
import D2LSupport
import Foundation

/// The FAT boot partition: made with mkfs.vfat, filled with mtools, and made
/// bootable with syslinux's mtools installer, all on plain files.
struct BootPartition: Sendable {
    var diskPath: String
    var partition: PartitionTable.Partition
    var volumeID: UInt32
    /// SOURCE_DATE_EPOCH: mtools stamps the directories it makes with it instead of the clock.
    var epoch: Int64?

    static let codeDirectories = ["/usr/lib/syslinux/mbr", "/usr/share/syslinux", "/usr/lib/SYSLINUX", "/usr/share/syslinux/mbr"]

    /// syslinux's boot code for sector 0: mbr.bin boots the active MBR partition, gptmbr.bin the GPT
    /// partition with the LegacyBIOSBootable attribute.
    static func mbrCodePath(gpt: Bool) -> String? {
        let name = gpt ? "gptmbr.bin" : "mbr.bin"
        return codeDirectories.map { $0 + "/" + name }.first { FileManager.default.isReadableFile(atPath: $0) }
    }

    static func mbrCode(gpt: Bool) throws(DiskError) -> [UInt8] {
        guard let path = mbrCodePath(gpt: gpt), let data = FileManager.default.contents(atPath: path), data.count >= 400
        else {
            throw DiskError.tool("syslinux's \(gpt ? "gptmbr.bin" : "mbr.bin") was not found (install syslinux-common)")
        }
        return Array(data.prefix(440))
    }

    /// The FAT type for a partition of this size: FAT16 while small, FAT32 beyond.
    static func fatBits(forBytes bytes: UInt64) -> Int { bytes < 512 << 20 ? 16 : 32 }

    private var mtoolsTarget: String { "\(diskPath)@@\(partition.byteOffset)" }
    private var env: [String: String] {
        var env = ["MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"]
        if let epoch { env["SOURCE_DATE_EPOCH"] = String(epoch) }
        return env
    }

    /// Formats the partition in place, inside the disk file.
    func format(epoch: Int64?) async throws {
        var args = [
            "mkfs.vfat", "-F", "\(Self.fatBits(forBytes: partition.byteCount))", "-n", "BOOT",
            "-i", String(format: "%08X", volumeID), "-h", "\(partition.firstSector)",
            "--offset", "\(partition.firstSector)",
        ]
        if epoch != nil { args.append("--invariant") }
        args += [diskPath, "\(partition.byteCount / 1024)"]
        try await ProcessRunner.run(args, environment: env)
    }

    /// Creates directories on the partition in one mmd run, in the order given (parents first).
    func mkdir(_ paths: [String]) async throws {
        guard !paths.isEmpty else { return }
        try await ProcessRunner.run(["mmd", "-i", mtoolsTarget] + paths.map { "::/" + $0 }, environment: env)
    }

    /// Copies several host files into a directory of the partition in one mcopy run.
    func copy(_ sources: [String], toDirectory destination: String) async throws {
        try await ProcessRunner.run(
            ["mcopy", "-o", "-m", "-i", mtoolsTarget] + sources + ["::/" + destination], environment: env)
    }

    /// Installs syslinux (boot sector + ldlinux.sys) into /syslinux.
    func installSyslinux() async throws {
        // syslinux writes ldlinux.sys through mcopy: without SOURCE_DATE_EPOCH it gets the clock's time.
        try await ProcessRunner.run(
            ["syslinux", "--install", "--offset", "\(partition.byteOffset)", "--directory", "/syslinux", diskPath],
            environment: env)
    }
}
