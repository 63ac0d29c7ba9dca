import D2LSupport
import Foundation
import Testing
@testable import D2LDiskModel

@Suite struct DiskImageTests {
    @Test func detectsFormatsByMagic() {
        func head(_ bytes: [UInt8], at offset: Int = 0) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: 512)
            out.replaceSubrange(offset..<offset + bytes.count, with: bytes)
            return out
        }
        #expect(DiskFormat.detect(head: head([0x51, 0x46, 0x49, 0xFB]), footer: []) == .qcow2)
        #expect(DiskFormat.detect(head: head(Array("KDMV".utf8)), footer: []) == .vmdk)
        #expect(DiskFormat.detect(head: head([0x7F, 0x10, 0xDA, 0xBE], at: 0x40), footer: []) == .vdi)
        #expect(DiskFormat.detect(head: head(Array("vhdxfile".utf8)), footer: []) == .vhdx)
        #expect(DiskFormat.detect(head: head([]), footer: head(Array("conectix".utf8))) == .vpc)
        #expect(DiskFormat.detect(head: head([0xEB, 0x63, 0x90]), footer: head([])) == .raw)
        #expect(DiskFormat.fromExtension("/x/disk.vhd") == .vpc)
        #expect(DiskFormat.fromExtension("/x/disk.foo") == nil)
        // The output's format: no extension is raw, an unknown one is nothing (refused by build).
        #expect(DiskFormat.forOutput("/x/disk") == .raw && DiskFormat.forOutput(".hidden") == .raw)
        #expect(DiskFormat.forOutput("/x.d/disk.qcow2") == .qcow2 && DiskFormat.forOutput("d.oci.tar") == .containerdisk)
        #expect(DiskFormat.forOutput("/x/disk.foo") == nil && DiskFormat.forOutput("disk.vhdx.gz") == nil)
        #expect(DiskFormat.unknownExtensionMessage("disk.foo").contains(".qcow2"))
    }

    @Test func classifiesInitSystems() {
        #expect(InitSystem.classify(initChain: ["/sbin/init", "/lib/systemd/systemd"], inittab: nil, hasOpenRC: false) == .systemd)
        #expect(InitSystem.classify(initChain: ["/sbin/init", "/bin/busybox"], inittab: nil, hasOpenRC: false) == .busybox)
        #expect(InitSystem.classify(initChain: ["/sbin/init", "/sbin/openrc-init"], inittab: nil, hasOpenRC: false) == .openrc)
        #expect(InitSystem.classify(initChain: ["/sbin/init"], inittab: "id:2:initdefault:", hasOpenRC: false) == .sysvinit)
        #expect(InitSystem.classify(initChain: ["/sbin/init"], inittab: "id:2:initdefault:", hasOpenRC: true) == .openrc)
        #expect(InitSystem.classify(initChain: ["/sbin/init"], inittab: "l0:0:wait:/sbin/openrc shutdown", hasOpenRC: false) == .openrc)
        #expect(InitSystem.classify(initChain: [], inittab: "x", hasOpenRC: true) == .unknown)
        #expect(InitSystem.classify(initChain: ["/sbin/init"], inittab: nil, hasOpenRC: false) == .unknown)
    }

    @Test func parsesOSRelease() {
        let release = OSRelease(parsing: Array("# comment\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID='12'\nbogus\n".utf8))
        #expect(release.prettyName == "Debian GNU/Linux 12 (bookworm)")
        #expect(release.id == "debian")
        #expect(release.versionID == "12")
        #expect(OSRelease(parsing: Array("ID=alpine\nVERSION_ID=3.20\n".utf8)).name == "alpine 3.20")
    }

    /// A root tree with merged /usr links, an x86-64 ELF init and os-release behind a symlink.
    static func makeRootTree(_ tree: URL) throws {
        let files = FileManager.default
        try files.createDirectory(at: tree.appendingPathComponent("usr/sbin"), withIntermediateDirectories: true)
        try files.createDirectory(at: tree.appendingPathComponent("usr/lib/systemd"), withIntermediateDirectories: true)
        try files.createDirectory(at: tree.appendingPathComponent("etc"), withIntermediateDirectories: true)
        try files.createSymbolicLink(atPath: tree.appendingPathComponent("sbin").path, withDestinationPath: "usr/sbin")
        try files.createSymbolicLink(atPath: tree.appendingPathComponent("lib").path, withDestinationPath: "usr/lib")
        var elf = [UInt8](repeating: 0, count: 64)
        elf.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        elf[18] = 62
        try Data(elf).write(to: tree.appendingPathComponent("usr/lib/systemd/systemd"))
        try files.createSymbolicLink(
            atPath: tree.appendingPathComponent("usr/sbin/init").path, withDestinationPath: "../lib/systemd/systemd")
        try Data("PRETTY_NAME=\"Test Linux 1\"\nID=test\n".utf8)
            .write(to: tree.appendingPathComponent("usr/lib/os-release"))
        try files.createSymbolicLink(
            atPath: tree.appendingPathComponent("etc/os-release").path, withDestinationPath: "../usr/lib/os-release")
    }

    @Test(arguments: PartitionTable.Scheme.allCases)
    func opensADiskOnceAndReadsItsRoot(scheme: PartitionTable.Scheme) async throws {
        let disk = try ScratchDisk(bytes: 32 << 20)
        let tree = URL(fileURLWithPath: disk.directory).appendingPathComponent("root")
        try Self.makeRootTree(tree)
        // The root is the second partition, at 1 MiB + 1 MiB, on an MBR or a GPT.
        let root = PartitionTable.Partition(
            number: 2, type: scheme == .gpt ? .linuxRoot(.amd64) : .mbrLinux, firstSector: 4096, sectorCount: 16 << 11)
        let boot = PartitionTable.Partition(
            number: 1, type: scheme == .gpt ? .efiSystem : .fat16LBA, firstSector: 2048, sectorCount: 2048)
        try PartitionTable(scheme: scheme, diskSectors: 32 << 11, partitions: [boot, root]).write(
            toDisk: disk.path, bootCode: [])
        let uuid = "6f1d1f3e-2b7a-4c59-9d2e-0123456789ab"
        try await ProcessRunner.run([
            "mkfs.ext4", "-q", "-F", "-U", uuid, "-E", "offset=\(4096 * 512)", "-d", tree.path, disk.path, "16M",
        ])

        let image = try DiskImage.open(disk.path)
        #expect(image.format == .raw)
        #expect(image.table?.scheme == scheme)
        #expect(image.rootUUID == uuid)
        #expect(image.rootPartition?.number == 2)
        #expect(image.bootPartition?.number == 1)
        let guest = try #require(image.guest)
        #expect(guest.prettyName == "Test Linux 1")
        #expect(guest.initSystem == .systemd)
        #expect(guest.initChain == ["/sbin/init", "/sbin/../lib/systemd/systemd"])
        #expect(guest.architecture == .amd64)
        #expect(image.rootArgument(device: "/dev/vda", initrd: true) == "UUID=\(uuid)")
        #expect(image.rootArgument(device: "/dev/sda", initrd: false) == "/dev/sda2")
    }

    @Test func rootWithoutAnInitrdIsTheRootPartitionsDeviceName() {
        // FAT in entry 1, Linux in entry 3.
        let table = PartitionTable(
            scheme: .mbr, diskSectors: 1 << 20,
            partitions: [
                .init(number: 1, type: .fat32LBA, firstSector: 2048, sectorCount: 2048),
                .init(number: 3, type: .mbrLinux, firstSector: 4096, sectorCount: 8192),
            ])
        let disk = DiskImage(path: "/d.img", format: .raw, table: table, rootOffset: 4096 * 512, rootUUID: "ab-cd", guest: nil)
        #expect(disk.rootArgument(device: "/dev/vda", initrd: true) == "UUID=ab-cd")
        #expect(disk.rootArgument(device: "/dev/vda", initrd: false) == "/dev/vda3")
        let qcow = DiskImage(path: "/d.qcow2", format: .qcow2, table: nil, rootOffset: nil, rootUUID: nil, guest: nil)
        #expect(qcow.rootArgument(device: "/dev/sda", initrd: true) == "/dev/sda2")
    }

    @Test func aMissingDiskIsUnreadable() {
        #expect(throws: DiskModelError.self) { try DiskImage.open("/nonexistent/disk.img") }
    }

    @Test("an overlay's backing file is read (qemu-img info); a self-contained qcow2 and a raw disk have none")
    func overlayBackingFile() async throws {
        let dir = NSTemporaryDirectory() + "d2l-backing-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await ProcessRunner.run(["qemu-img", "create", "-q", "-f", "raw", dir + "/base.img", "4M"])
        try await ProcessRunner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", dir + "/base.img", dir + "/over.qcow2"])
        try await ProcessRunner.run(["qemu-img", "create", "-q", "-f", "qcow2", dir + "/alone.qcow2", "4M"])
        #expect(try await DiskImage.open(dir + "/over.qcow2").backingFile() == dir + "/base.img")
        #expect(try await DiskImage.open(dir + "/alone.qcow2").backingFile() == nil)
        #expect(try await DiskImage.open(dir + "/base.img").backingFile() == nil)
    }
}
