import Foundation
import Testing
@testable import D2LVerify

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
    }

    @Test func classifiesInitSystems() {
        #expect(GuestInspector.classify(chain: ["/sbin/init", "/lib/systemd/systemd"], exists: { _ in false }) == .systemd)
        #expect(GuestInspector.classify(chain: ["/sbin/init", "/bin/busybox"], exists: { _ in false }) == .busybox)
        #expect(GuestInspector.classify(chain: ["/sbin/init", "/sbin/openrc-init"], exists: { _ in false }) == .openrc)
        #expect(GuestInspector.classify(chain: ["/sbin/init"], exists: { $0 == "/etc/inittab" }) == .sysvinit)
        #expect(GuestInspector.classify(chain: [], exists: { _ in true }) == .unknown)
    }

    @Test func readsOsReleaseAndInitThroughUsrMergeSymlinks() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/mkfs.ext4")
            || FileManager.default.isExecutableFile(atPath: "/sbin/mkfs.ext4")
        else { return }
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("d2l-verify-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: work) }
        let tree = work.appendingPathComponent("root")
        let files = FileManager.default
        try files.createDirectory(at: tree.appendingPathComponent("usr/sbin"), withIntermediateDirectories: true)
        try files.createDirectory(at: tree.appendingPathComponent("usr/lib/systemd"), withIntermediateDirectories: true)
        try files.createDirectory(at: tree.appendingPathComponent("etc"), withIntermediateDirectories: true)
        try files.createSymbolicLink(atPath: tree.appendingPathComponent("sbin").path, withDestinationPath: "usr/sbin")
        try files.createSymbolicLink(atPath: tree.appendingPathComponent("lib").path, withDestinationPath: "usr/lib")
        try Data("ELF".utf8).write(to: tree.appendingPathComponent("usr/lib/systemd/systemd"))
        try files.createSymbolicLink(
            atPath: tree.appendingPathComponent("usr/sbin/init").path, withDestinationPath: "../lib/systemd/systemd")
        try Data("PRETTY_NAME=\"Test Linux 1\"\nID=test\n".utf8)
            .write(to: tree.appendingPathComponent("usr/lib/os-release"))
        try files.createSymbolicLink(
            atPath: tree.appendingPathComponent("etc/os-release").path, withDestinationPath: "../usr/lib/os-release")

        // An MBR disk whose second partition (type 0x83) starts at 1 MiB and holds the ext4 root.
        let disk = work.appendingPathComponent("disk.img").path
        var mbr = [UInt8](repeating: 0, count: 512)
        let entry = 446 + 16
        mbr[entry + 4] = 0x83
        mbr[entry + 9] = 0x08  // LBA 2048, little endian
        mbr[entry + 12] = 0x00
        mbr[510] = 0x55
        mbr[511] = 0xAA
        _ = files.createFile(atPath: disk, contents: Data(mbr))
        let mkfs = Process()
        mkfs.executableURL = URL(fileURLWithPath: "/usr/sbin/mkfs.ext4")
        mkfs.arguments = ["-q", "-F", "-E", "offset=1048576", "-d", tree.path, disk, "8M"]
        try mkfs.run()
        mkfs.waitUntilExit()
        try #require(mkfs.terminationStatus == 0)

        let info = try #require(GuestInspector.inspect(path: disk, format: .raw))
        #expect(info.prettyName == "Test Linux 1")
        #expect(info.initSystem == .systemd)
        #expect(info.initPath == ["/sbin/init", "/sbin/../lib/systemd/systemd"])
        #expect(GuestInspector.inspect(path: disk, format: .qcow2) == nil)
    }

    @Test func domainXMLIsTransientUnlabelledAndEndsOnEveryStop() {
        let spec = MachineSpec(name: "d2l-verify-test", diskPath: "/d/a&b.img", diskFormat: .qcow2, diskBus: .sata)
        let xml = spec.domainXML
        for needle in [
            "<domain type='qemu'>", "<transient shareBacking='yes'/>", "<seclabel type='none'/>", "<bios useserial='yes'/>",
            "<on_reboot>destroy</on_reboot>", "<on_poweroff>destroy</on_poweroff>", "<on_crash>destroy</on_crash>",
            "type='qcow2'", "bus='sata'", "/d/a&amp;b.img", "<serial type='pty'>",
        ] {
            #expect(xml.contains(needle), "\(needle)")
        }
        #expect(!xml.contains("<graphics"))
        #expect(!xml.contains("<interface"))
        #expect(MachineSpec.uniqueName() != MachineSpec.uniqueName())
    }
}
