import D2LSupport
import Foundation

/// The firmware a disk boots under.
public enum Firmware: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// A PC BIOS (SeaBIOS): the MBR's boot code, then syslinux.
    case bios
    /// UEFI (OVMF) without Secure Boot: `\EFI\BOOT\BOOTX64.EFI` on the EFI system partition.
    case uefi
    /// UEFI with Secure Boot on and Microsoft's keys enrolled: only a signed chain boots.
    case uefiSecure = "uefi-secure"

    public var description: String { rawValue }
}

/// How a disk is to be made bootable: under a BIOS, under UEFI, or both from one disk.
public enum BootMode: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// syslinux for BIOS and an EFI loader, on the same FAT partition, pointing at the same kernel.
    case hybrid
    case bios
    case uefi

    public var description: String { rawValue }
    public var bios: Bool { self != .uefi }
    public var uefi: Bool { self != .bios }
}

/// The EFI loaders d2l places at the removable-media path.
public enum EFILoader: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// systemd-boot with `/loader/loader.conf` and `/loader/entries/d2l.conf`.
    case systemdBoot = "systemd-boot"
    /// shim (signed by Microsoft's UEFI CA) loading the distribution's signed GRUB: Secure Boot.
    case shim
    /// GRUB loaded directly.
    case grub

    public var description: String { rawValue }
}

/// What the boot partition holds for each firmware, read back from a disk.
public struct BootSetup: Sendable, Equatable, Codable {
    /// syslinux is installed (`/syslinux/ldlinux.sys`): the disk boots under a BIOS.
    public var syslinux: Bool
    /// The loader at `\EFI\BOOT\BOOT<ARCH>.EFI`, when there is one.
    public var efiLoader: EFILoader?
    /// The architecture the EFI loader's file name is for (`BOOTX64.EFI`, `BOOTAA64.EFI`).
    public var efiArchitecture: Architecture?

    public init(syslinux: Bool, efiLoader: EFILoader?, efiArchitecture: Architecture? = nil) {
        self.syslinux = syslinux
        self.efiLoader = efiLoader
        self.efiArchitecture = efiArchitecture
    }

    /// The firmware under which the disk claims to boot: BIOS with syslinux; UEFI with an EFI loader,
    /// and under Secure Boot (rather than without it) when that loader is shim.
    public var claimedFirmware: [Firmware] {
        var out: [Firmware] = []
        if syslinux { out.append(.bios) }
        switch efiLoader {
        case .shim: out.append(.uefiSecure)
        case .systemdBoot, .grub: out.append(.uefi)
        case nil: break
        }
        return out
    }

    /// The removable-media path of the EFI loader for `architecture` (UEFI specification 3.5.1.1).
    public static func removableMediaPath(_ architecture: Architecture) -> String {
        switch architecture {
        case .amd64: return "EFI/BOOT/BOOTX64.EFI"
        case .arm64: return "EFI/BOOT/BOOTAA64.EFI"
        }
    }

    /// Recognises a loader binary by the strings it carries.
    public static func loader(identifying binary: [UInt8]) -> EFILoader? {
        func contains(_ text: String) -> Bool {
            let needle = Array(text.utf8)
            return binary.withUnsafeBufferPointer { buffer in
                guard buffer.count >= needle.count else { return false }
                var index = 0
                while index <= buffer.count - needle.count {
                    if buffer[index] == needle[0], Array(buffer[index..<index + needle.count]) == needle { return true }
                    index += 1
                }
                return false
            }
        }
        if contains("UEFI SHIM") { return .shim }
        if contains("LoaderInfo: systemd-boot") { return .systemdBoot }
        if contains("GNU GRUB") { return .grub }
        return nil
    }

    /// Reads the boot partition of a raw disk with mtools: whether syslinux is installed and which
    /// EFI loader sits at the removable-media path.
    ///
    /// - Throws: nothing for a disk without these files (they are then absent from the result);
    ///   `ProcessError` when mtools cannot read the partition at all.
    public static func read(disk path: String, partition: PartitionTable.Partition) async throws -> BootSetup {
        let target = "\(path)@@\(partition.byteOffset)"
        let environment = ["MTOOLS_SKIP_CHECK": "1"]
        // -a: ldlinux.sys is hidden and a system file.
        let listing = try await ProcessRunner.run(["mdir", "-a", "-b", "-/", "-i", target, "::/"], environment: environment)
        let names = Set(listing.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces).lowercased() })
        let syslinux = names.contains("::/syslinux/ldlinux.sys")
        for architecture in Architecture.allCases {
            let file = "::/" + removableMediaPath(architecture)
            guard names.contains(file.lowercased()) else { continue }
            let copy = NSTemporaryDirectory() + "d2l-efi-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).efi"
            defer { try? FileManager.default.removeItem(atPath: copy) }
            _ = await ProcessRunner.capture(["mcopy", "-n", "-i", target, file, copy], environment: environment)
            let binary = FileManager.default.contents(atPath: copy).map { [UInt8]($0) } ?? []
            return BootSetup(syslinux: syslinux, efiLoader: loader(identifying: binary) ?? .grub, efiArchitecture: architecture)
        }
        return BootSetup(syslinux: syslinux, efiLoader: nil)
    }
}

extension DiskImage {
    /// The backing file an overlay image names (a qcow2's, a differencing VHD's or VMDK's), from
    /// `qemu-img info`; nil for raw disks, self-contained images, or when qemu-img cannot say.
    /// d2l boots an image by itself, its chain cut after it, so an overlay must be flattened first.
    public func backingFile() async -> String? {
        guard format != .raw else { return nil }
        let result = await ProcessRunner.capture(["qemu-img", "info", "--output=json", "-f", format.rawValue, path])
        guard result.status == 0,
            let object = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        else { return nil }
        return (object["full-backing-filename"] ?? object["backing-filename"]) as? String
    }

    /// What the boot partition holds for each firmware: read from a raw disk in place, and from the
    /// first mebibytes of any other format converted to raw with `qemu-img dd`; nil when there is no
    /// boot partition to read.
    public func bootSetup() async -> BootSetup? {
        if format == .raw {
            guard let boot = bootPartition else { return nil }
            return try? await BootSetup.read(disk: path, partition: boot)
        }
        let head = NSTemporaryDirectory() + "d2l-head-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).raw"
        defer { try? FileManager.default.removeItem(atPath: head) }
        func convert(mebibytes: UInt64) async -> Bool {
            let result = await ProcessRunner.capture([
                "qemu-img", "dd", "-f", format.rawValue, "-O", "raw", "bs=1M", "count=\(mebibytes)", "if=\(path)",
                "of=\(head)",
            ])
            return result.status == 0
        }
        guard await convert(mebibytes: 1), let table = try? PartitionTable.read(path: head),
            let boot = table.partition(.boot)
        else { return nil }
        guard await convert(mebibytes: (boot.byteOffset + boot.byteCount + (1 << 20) - 1) >> 20) else { return nil }
        return try? await BootSetup.read(disk: head, partition: boot)
    }
}
