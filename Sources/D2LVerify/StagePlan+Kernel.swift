import Foundation

extension StagePlan {
    /// For a direct kernel boot: no bootloader stage, and the kernel stage accepts only `kernel`'s banner.
    ///
    /// Any other `Linux version` line fails the run at once ("another kernel booted"), so a stale or
    /// mixed-up kernel is a failure even when the rest of the boot goes well.
    public mutating func bootDirectly(_ kernel: KernelImage) {
        stages.removeAll { $0.name == "bootloader" }
        let banner = ConsolePattern(builtIn: kernel.bannerPattern)
        if let index = stages.firstIndex(where: { $0.name == "kernel" }) {
            stages[index].pattern = banner
        } else {
            stages.insert(BootStage(name: "kernel", pattern: banner, deadline: .seconds(60)), at: 0)
        }
        failures.removeAll { $0.name == "bootloader error" || $0.name == "another kernel booted" }
        failures.append(
            FailurePattern(name: "another kernel booted", pattern: ConsolePattern(builtIn: kernel.otherKernelPattern)))
    }
}

extension GuestInspector {
    /// The `root=` for booting `path` with an outside kernel.
    ///
    /// With an initrd, the ext4 root's UUID when it can be read (raw disks). Without one the kernel
    /// itself must find the root, and it knows no UUID=: then the device name, from the partition
    /// d2l build's layout (or the disk's own MBR) puts the root on.
    public static func rootDevice(path: String, format: DiskFormat, bus: DiskBus, initrd: Bool = true) -> String {
        if initrd, format == .raw, let uuid = rootUUID(path: path) { return "UUID=\(uuid)" }
        let number = format == .raw ? linuxPartitionNumber(path: path) ?? 2 : 2
        return (bus == .virtio ? "/dev/vda" : "/dev/sda") + String(number)
    }

    /// 1-4: the MBR entry of the first Linux partition.
    static func linuxPartitionNumber(path: String) -> Int? {
        mbrPartition(path: path, types: linuxTypes)?.number
    }

    /// The UUID in the ext2/3/4 superblock of the disk's Linux partition.
    static func rootUUID(path: String) -> String? {
        guard let offset = linuxPartitionOffset(path: path),
            let handle = FileHandle(forReadingAtPath: path)
        else { return nil }
        defer { try? handle.close() }
        guard (try? handle.seek(toOffset: offset + 1024)) != nil,
            let data = try? handle.read(upToCount: 1024), data.count == 1024
        else { return nil }
        return superblockUUID([UInt8](data))
    }

    /// s_uuid (offset 0x68) of an ext superblock, or nil when the magic (0xEF53 at 0x38) is missing.
    static func superblockUUID(_ superblock: [UInt8]) -> String? {
        guard superblock.count >= 0x78, superblock[0x38] == 0x53, superblock[0x39] == 0xEF else { return nil }
        let bytes = superblock[0x68..<0x78]
        guard bytes.contains(where: { $0 != 0 }) else { return nil }
        let hex = bytes.map { String(format: "%02x", $0) }.joined()
        let cuts = [8, 12, 16, 20]
        var out = ""
        for (index, character) in hex.enumerated() {
            if cuts.contains(index) { out += "-" }
            out.append(character)
        }
        return out
    }
}
