import D2LDisk
import D2LImage
import Foundation
import Testing

/// Initrds made by the test as initramfs-tools and dracut make them: an uncompressed early cpio
/// (microcode) followed by a compressed main one.
@Suite struct InitrdDriverCheckTests {
    /// One newc ("070701") archive holding `files` (path, bytes), directories implied, with its trailer.
    static func newc(_ files: [(String, [UInt8])]) -> [UInt8] {
        var out: [UInt8] = []
        func pad() { while out.count % 4 != 0 { out.append(0) } }
        func entry(_ name: String, mode: Int, data: [UInt8], ino: Int) {
            let fields = [ino, mode, 0, 0, 1, 0, data.count, 0, 0, 0, 0, name.utf8.count + 1, 0]
            out += Array("070701".utf8)
            for field in fields { out += Array(String(format: "%08X", field).utf8) }
            out += Array(name.utf8) + [0]
            pad()
            out += data
            pad()
        }
        for (index, file) in files.enumerated() { entry(file.0, mode: 0o100644, data: file.1, ino: index + 1) }
        entry("TRAILER!!!", mode: 0, data: [], ino: 0)
        while out.count % 512 != 0 { out.append(0) }
        return out
    }

    static func compressed(_ bytes: [UInt8], with tool: String) throws -> [UInt8] {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("d2l-initrd-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = dir.appendingPathComponent("in")
        try Data(bytes).write(to: input)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [tool, "-c", input.path]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        return Array(data)
    }

    static let early = newc([("kernel/x86/microcode/GenuineIntel.bin", Array(repeating: 0x5A, count: 1000))])
    static let version = "6.1.0-50-amd64"

    static func modules(_ names: [String]) -> [(String, [UInt8])] {
        [("init", Array("#!/bin/sh\n".utf8)), ("lib/modules/\(version)/modules.dep", [])]
            + names.map { ("usr/lib/modules/\(version)/kernel/drivers/\($0).ko.xz", Array(repeating: 1, count: 37)) }
    }

    @Test(arguments: ["gzip", "zstd", "xz"]) func microcodeThenCompressedMain(tool: String) throws {
        let main = try Self.compressed(Self.newc(Self.modules(["block/virtio_blk", "virtio/virtio_pci", "fs/ext4"])), with: tool)
        let listing = try InitramfsListing(bytes: Data(Self.early + main), name: "initrd.img")
        #expect(listing.paths.contains("kernel/x86/microcode/GenuineIntel.bin"))
        #expect(listing.paths.contains("init"))
        #expect(listing.modules == ["virtio_blk", "virtio_pci", "ext4"])
        #expect(InitrdDriverCheck.missing(initrd: listing.modules, builtin: []).isEmpty)
    }

    @Test func aHostOnlyInitrdWithoutVirtioIsNamed() throws {
        // dracut --hostonly on a build host with NVMe and SATA disks: no virtio drivers.
        let main = try Self.compressed(Self.newc(Self.modules(["nvme/host/nvme", "ata/ahci", "fs/ext4"])), with: "zstd")
        let listing = try InitramfsListing(bytes: Data(Self.early + main), name: "initrd.img")
        let missing = InitrdDriverCheck.missing(initrd: listing.modules, builtin: [])
        #expect(missing.map(\.module) == ["virtio_pci", "virtio_blk"])
        let warning = try #require(
            InitrdDriverCheck.warning(kernel: Self.version, initrd: "/boot/initrd.img-\(Self.version)", missing: missing))
        #expect(warning.contains("virtio_blk (the virtio disk)"))
        #expect(warning.contains("/boot/initrd.img-\(Self.version)"))
        #expect(warning.contains("dracut"))
    }

    @Test func builtInDriversNeedNoModule() throws {
        // A kernel with virtio built in (Debian's cloud kernels, most distributions' defaults).
        let builtin = InitrdDriverCheck.builtinModules("""
            kernel/drivers/virtio/virtio_pci.ko
            kernel/drivers/block/virtio_blk.ko
            kernel/fs/ext4/ext4.ko

            """)
        #expect(builtin == ["virtio_pci", "virtio_blk", "ext4"])
        let listing = try InitramfsListing(bytes: Data(Self.newc(Self.modules([]))), name: "initrd")
        #expect(InitrdDriverCheck.missing(initrd: listing.modules, builtin: builtin).isEmpty)
    }

    @Test func damagedOrEmptyInitrdsAreErrors() throws {
        #expect(throws: ImageError.self) { try InitramfsListing(bytes: Data(count: 4096), name: "zeros") }
        var cut = Self.early
        cut.removeLast(cut.count - 200)
        #expect(throws: ImageError.self) { try InitramfsListing(bytes: Data(cut), name: "cut") }
        #expect(throws: ImageError.self) { try InitramfsListing(bytes: Data("not an initrd".utf8), name: "text") }
    }

    @Test func moduleNamesAreReadAsModprobeReadsThem() {
        #expect(InitramfsListing.moduleName(ofPath: "lib/modules/6.1/kernel/drivers/scsi/sd_mod.ko") == "sd_mod")
        #expect(InitramfsListing.moduleName(ofPath: "x/virtio-blk.ko.zst") == "virtio_blk")
        #expect(InitramfsListing.moduleName(ofPath: "lib/modules/6.1/modules.dep") == nil)
    }
}
