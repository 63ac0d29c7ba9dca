import D2LDiskModel
import D2LImage
import D2LSupport
import Foundation
import Testing

@testable import D2LDisk

/// Disks built from a small generated root (a fake kernel and initrd, an x86-64 init), read back with
/// independent tools: sfdisk for the table, mtools for the boot partition.
@Suite("Boot layout", .serialized)
struct BootLayoutTests {
    /// A root file system folder with what the builder checks for; `systemdBoot` puts the image's own
    /// loader in /usr/lib/systemd/boot/efi.
    /// `architecture` sets the init's ELF machine, the kernel's header and the systemd-boot binary's name.
    static func makeRoot(
        _ directory: String, systemdBoot: Bool = true, shim: Bool = false, architecture: Architecture = .amd64,
        kernelArchitecture: Architecture? = nil
    ) throws {
        let files = FileManager.default
        for folder in ["boot", "sbin", "etc", "usr/lib/systemd/boot/efi", "usr/lib/shim", "usr/lib/grub/x86_64-efi-signed"] {
            try files.createDirectory(atPath: directory + "/" + folder, withIntermediateDirectories: true)
        }
        var elf = [UInt8](repeating: 0, count: 64)
        elf.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        elf[18] = UInt8(architecture.elfMachine)
        try Data(elf).write(to: URL(fileURLWithPath: directory + "/sbin/init"))
        chmod(directory + "/sbin/init", 0o755)
        var kernel = [UInt8](repeating: 0x4B, count: 300_000)
        switch kernelArchitecture ?? architecture {
        case .amd64: kernel.replaceSubrange(0x202..<0x206, with: Array("HdrS".utf8))
        case .arm64: kernel.replaceSubrange(56..<60, with: Array("ARM\u{64}".utf8))
        }
        try Data(kernel).write(to: URL(fileURLWithPath: directory + "/boot/vmlinuz-1.0-test"))
        try Data(repeating: 0x49, count: 200_000).write(to: URL(fileURLWithPath: directory + "/boot/initrd.img-1.0-test"))
        try Data("PRETTY_NAME=\"Test Linux\"\n".utf8).write(to: URL(fileURLWithPath: directory + "/etc/os-release"))
        if systemdBoot {
            try Data("MZ...#### LoaderInfo: systemd-boot 252 ####...".utf8)
                .write(to: URL(fileURLWithPath: directory + "/" + BootLoaders.systemdBoot(architecture)))
        }
        if shim {
            try Data("MZ UEFI SHIM".utf8).write(to: URL(fileURLWithPath: directory + "/" + BootLoaders.shim))
            try Data("MZ GNU GRUB  version".utf8).write(to: URL(fileURLWithPath: directory + "/" + BootLoaders.signedGrub))
        }
    }

    static func build(
        _ root: String, to output: String, mode: BootMode = .hybrid, table: PartitionTable.Scheme = .gpt,
        secureBoot: Bool = false, epoch: Int64? = nil
    ) async throws -> BuildSummary {
        var options = BuildOptions(output: output)
        options.bootMode = mode
        options.partitionTable = table
        options.secureBoot = secureBoot
        options.force = true
        options.sourceDateEpoch = epoch
        options.minimumHeadroom = 8 << 20
        let image = try ImageReader.open(path: root)
        return try await DiskBuilder(image: image, options: options, progress: ProgressReporter(mode: .quiet)).build()
    }

    static func scratch() throws -> String {
        let directory = NSTemporaryDirectory() + "d2l-layout-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory
    }

    struct Sfdisk: Decodable {
        struct Table: Decodable {
            var label: String
            var partitions: [Entry]
        }
        struct Entry: Decodable {
            var start: UInt64
            var type: String
            var attrs: String?
            var bootable: Bool?
        }
        var partitiontable: Table
    }

    static func sfdisk(_ disk: String) async throws -> Sfdisk.Table {
        try JSONDecoder().decode(Sfdisk.self, from: Data(try await ProcessRunner.run(["sfdisk", "--json", disk]).utf8))
            .partitiontable
    }

    static func espFiles(_ disk: String, offset: UInt64) async throws -> Set<String> {
        let listing = try await ProcessRunner.run(
            ["mdir", "-a", "-b", "-/", "-i", "\(disk)@@\(offset)", "::/"], environment: ["MTOOLS_SKIP_CHECK": "1"])
        return Set(listing.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) })
    }

    @Test("a hybrid GPT disk: the ESP with LegacyBIOSBootable, gptmbr.bin, syslinux and the image's systemd-boot")
    func hybridGPT() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.makeRoot(dir + "/root")
        let summary = try await Self.build(dir + "/root", to: dir + "/disk.img")
        #expect(summary.partitionTable == "gpt" && summary.bootMode == "hybrid")
        #expect(summary.efiLoader?.contains("the image's /usr/lib/systemd/boot/efi/systemd-bootx64.efi") == true)
        let table = try await Self.sfdisk(dir + "/disk.img")
        #expect(table.label == "gpt")
        #expect(table.partitions.map(\.type) == ["C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"])
        #expect(table.partitions[0].attrs == "LegacyBIOSBootable")
        // gptmbr.bin, not mbr.bin, is the boot code.
        let sector = try #require(FileHandle(forReadingAtPath: dir + "/disk.img")?.readData(ofLength: 440))
        let gptmbrPath = try #require(BootPartition.mbrCodePath(gpt: true))
        let gptmbr = try #require(FileManager.default.contents(atPath: gptmbrPath))
        #expect(sector == gptmbr.prefix(440))
        let files = try await Self.espFiles(dir + "/disk.img", offset: table.partitions[0].start * 512)
        for file in [
            "::/EFI/BOOT/BOOTX64.EFI", "::/loader/loader.conf", "::/loader/entries/d2l.conf", "::/syslinux/ldlinux.sys",
            "::/syslinux/syslinux.cfg", "::/vmlinuz-1.0-test", "::/initrd.img-1.0-test",
        ] {
            #expect(files.contains(file), "\(file)")
        }
        #expect(!files.contains("::/EFI/BOOT/fbx64.efi"))
        let entry = try await ProcessRunner.run(
            ["mtype", "-i", "\(dir)/disk.img@@\(table.partitions[0].start * 512)", "::/loader/entries/d2l.conf"],
            environment: ["MTOOLS_SKIP_CHECK": "1"])
        #expect(entry.contains("linux /vmlinuz-1.0-test") && entry.contains("options root=UUID=\(summary.rootUUID) ro"))
        // The disk model reads back what the disk claims.
        let disk = try DiskImage.open(dir + "/disk.img")
        let setup = try #require(await disk.bootSetup())
        #expect(setup.claimedFirmware == [.bios, .uefi])
        #expect(setup.efiLoader == .systemdBoot)
    }

    @Test("an MBR disk: FAT active with mbr.bin for BIOS; of type 0xEF when it boots UEFI only")
    func mbrLayouts() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.makeRoot(dir + "/root")
        _ = try await Self.build(dir + "/root", to: dir + "/hybrid.img", table: .mbr)
        let hybrid = try await Self.sfdisk(dir + "/hybrid.img")
        #expect(hybrid.label == "dos")
        #expect(hybrid.partitions[0].bootable == true && hybrid.partitions[0].type == "e")
        _ = try await Self.build(dir + "/root", to: dir + "/uefi.img", mode: .uefi, table: .mbr)
        let uefi = try await Self.sfdisk(dir + "/uefi.img")
        #expect(uefi.partitions[0].type == "ef" && uefi.partitions[0].bootable != true)
        let files = try await Self.espFiles(dir + "/uefi.img", offset: uefi.partitions[0].start * 512)
        #expect(files.contains("::/EFI/BOOT/BOOTX64.EFI") && !files.contains("::/syslinux/ldlinux.sys"))
        let setup = try #require(await DiskImage.open(dir + "/uefi.img").bootSetup())
        #expect(setup.claimedFirmware == [.uefi])
    }

    @Test("Secure Boot without the signed chain is refused before anything is written, naming the packages")
    func secureBootNeedsTheSignedChain() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.makeRoot(dir + "/root")
        do {
            _ = try await Self.build(dir + "/root", to: dir + "/sb.img", secureBoot: true)
            Issue.record("an image without shim built for Secure Boot")
        } catch let error as DiskError {
            let text = "\(error)"
            #expect(text.contains("shim-signed") && text.contains("grub-efi-amd64-signed") && text.contains("signed kernel"))
        }
        let left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0 != "root" }
        #expect(left.isEmpty, "\(left)")
        // With shim and GRUB (fake ones here), the unsigned fake kernel is still refused.
        try Self.makeRoot(dir + "/root", shim: true)
        do {
            _ = try await Self.build(dir + "/root", to: dir + "/sb.img", secureBoot: true)
            Issue.record("an unsigned kernel built for Secure Boot")
        } catch let error as DiskError {
            #expect("\(error)".contains("signed kernel") && !"\(error)".contains("shim-signed"))
        }
    }

    @Test("an arm64 userland: UEFI only (hybrid means what the architecture has), BOOTAA64.EFI, ttyAMA0, arm64 root type")
    func arm64Disk() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.makeRoot(dir + "/root", architecture: .arm64)
        let summary = try await Self.build(dir + "/root", to: dir + "/disk.img")
        #expect(summary.bootMode == "uefi")
        #expect(summary.efiLoader?.contains("the image's /usr/lib/systemd/boot/efi/systemd-bootaa64.efi") == true)
        let table = try await Self.sfdisk(dir + "/disk.img")
        #expect(table.partitions.map(\.type) == ["C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"])
        #expect(table.partitions[0].attrs != "LegacyBIOSBootable")
        let files = try await Self.espFiles(dir + "/disk.img", offset: table.partitions[0].start * 512)
        #expect(files.contains("::/EFI/BOOT/BOOTAA64.EFI") && !files.contains("::/EFI/BOOT/BOOTX64.EFI"))
        #expect(!files.contains("::/syslinux/ldlinux.sys"))
        let entry = try await ProcessRunner.run(
            ["mtype", "-i", "\(dir)/disk.img@@\(table.partitions[0].start * 512)", "::/loader/entries/d2l.conf"],
            environment: ["MTOOLS_SKIP_CHECK": "1"])
        #expect(entry.contains("console=tty0 console=ttyAMA0,115200") && !entry.contains("ttyS0"))
        // What the verifier reads back: an arm64 userland with an arm64 loader, claiming UEFI.
        let disk = try DiskImage.open(dir + "/disk.img")
        let setup = try #require(await disk.bootSetup())
        #expect(disk.guest?.architecture == .arm64 && setup.efiArchitecture == .arm64 && setup.claimedFirmware == [.uefi])
    }

    @Test("arm64 refusals before writing: BIOS, Secure Boot, no loader of its own, an x86 kernel in an arm64 userland")
    func arm64Refusals() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func refusal(_ mode: BootMode = .hybrid, secureBoot: Bool = false) async -> String {
            do {
                _ = try await Self.build(dir + "/root", to: dir + "/disk.img", mode: mode, secureBoot: secureBoot)
                return ""
            } catch {
                return "\(error)"
            }
        }
        try Self.makeRoot(dir + "/root", architecture: .arm64)
        #expect(await refusal(.bios).contains("UEFI only"))
        #expect(await refusal(secureBoot: true).contains("--secure-boot is for amd64"))
        try FileManager.default.removeItem(atPath: dir + "/root/" + BootLoaders.systemdBoot(.arm64))
        #expect(await refusal().contains("install systemd-boot-efi in the image"))
        try FileManager.default.removeItem(atPath: dir + "/root")
        try Self.makeRoot(dir + "/root", architecture: .arm64, kernelArchitecture: .amd64)
        let mixed = await refusal()
        #expect(mixed.contains("is an amd64 kernel and the userland is arm64") && mixed.contains("linux-image-arm64"))
        let left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0 != "root" }
        #expect(left.isEmpty, "\(left)")
    }

    @Test("same input and epoch: byte-identical disks, GPT GUIDs included")
    func reproducibleGPT() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.makeRoot(dir + "/root")
        // A directory input has no digest of its own: times are fixed by the epoch, the rest by the content.
        _ = try await Self.build(dir + "/root", to: dir + "/a.img", epoch: 1_700_000_000)
        _ = try await Self.build(dir + "/root", to: dir + "/b.img", epoch: 1_700_000_000)
        let a = try #require(FileManager.default.contents(atPath: dir + "/a.img"))
        let b = try #require(FileManager.default.contents(atPath: dir + "/b.img"))
        #expect(a == b)
    }
}
