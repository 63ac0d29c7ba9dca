import D2LDiskModel
import D2LImage
import D2LSupport
import Foundation
import Testing

@testable import D2LDisk

/// Whole builds of a generated root file system tar (a fake kernel, as in BootLayoutTests) that
/// carries what used to go wrong: the disk's size and the root's features come from the content.
@Suite("Layer semantics through DiskBuilder", .serialized)
struct DiskBuilderLayerTests {
    /// A root the builder accepts: an x86-64 init, a kernel `release` with its initrd, os-release and
    /// the image's own systemd-boot.
    static func root(kernel release: String) -> [TarEntry] {
        var elf = [UInt8](repeating: 0, count: 64)
        elf.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        elf[18] = 62
        return [
            TarEntry("sbin/init", .file(elf), mode: 0o755),
            TarEntry("boot/vmlinuz-\(release)", .file([UInt8](repeating: 0x4B, count: 300_000))),
            TarEntry("boot/initrd.img-\(release)", .file([UInt8](repeating: 0x49, count: 200_000))),
            .file("etc/os-release", "PRETTY_NAME=\"Test Linux\"\n"),
            TarEntry(BootLoaders.systemdBoot, .file(Array("MZ...#### LoaderInfo: systemd-boot 252 ####...".utf8))),
        ]
    }

    /// Builds `entries` (a docker-export style tar) into `dir`/disk.img.
    static func build(_ entries: [TarEntry], in dir: String) async throws -> BuildSummary {
        try writeTar(dir + "/root.tar", entries)
        return try await BootLayoutTests.build(dir + "/root.tar", to: dir + "/disk.img")
    }

    /// The root partition's byte offset in `disk`.
    static func rootOffset(_ disk: String) async throws -> Int64 {
        let table = try await BootLayoutTests.sfdisk(disk)
        return Int64(try #require(table.partitions.last).start * 512)
    }

    static func fsck(_ disk: String, offset: Int64) async throws -> (Int32, String) {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        return try fixture.run("e2fsck", "-fn", "\(disk)?offset=\(offset)")
    }

    @Test("a 5 GiB sparse file with 8 KiB of data makes a small disk, its holes kept")
    func sparseFileSizesTheDisk() async throws {
        let dir = try BootLayoutTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = TreeWriterTests.pattern(8192, seed: 23)
        let summary = try await Self.build(
            Self.root(kernel: "6.1.0-test") + [TarEntry("var/lib/big", .sparse(size: 5 << 30, data: [(1 << 30, data)]))],
            in: dir)
        // Sized from apparent sizes, the root alone would be over 5 GiB.
        #expect(summary.diskBytes < 256 << 20, "disk of \(summary.diskBytes) bytes")
        let offset = try await Self.rootOffset(dir + "/disk.img")
        let fs = try Ext4Reader(path: dir + "/disk.img", offset: offset)
        let big = try fs.stat("var/lib/big")
        #expect(big.size == 5 << 30)
        #expect(big.sectors == 2 * 8)
        #expect(try fs.read("var/lib/big", offset: 1 << 30, count: data.count) == data)
        let (status, output) = try await Self.fsck(dir + "/disk.img", offset: offset)
        #expect(status == 0, "e2fsck -fn:\n\(output)")
    }

    @Test("a 6 KB attribute turns ea_inode on for a kernel that mounts it, and is refused before writing for one that does not")
    func largeXattrChoosesEAInode() async throws {
        let dir = try BootLayoutTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let value = TreeWriterTests.pattern(6 * 1024, seed: 29)
        var tagged = TarEntry.file("opt/tagged", "data")
        tagged.xattrs = [("user.big", value)]

        await #expect {
            try await Self.build(Self.root(kernel: "4.9.0-test") + [tagged], in: dir)
        } throws: { error in
            guard case DiskError.xattrTooLarge(let path, let name, _, _, _)? = error as? DiskError else { return false }
            return path == "/opt/tagged" && name == "user.big"
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/disk.img"))

        _ = try await Self.build(Self.root(kernel: "6.1.0-test") + [tagged], in: dir)
        let offset = try await Self.rootOffset(dir + "/disk.img")
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let features = try fixture.run("dumpe2fs", "-h", "\(dir)/disk.img?offset=\(offset)").1
        #expect(features.contains("ea_inode"))
        let fs = try Ext4Reader(path: dir + "/disk.img", offset: offset)
        #expect(try fs.xattr("opt/tagged", "user.big") == value)
        let (status, output) = try await Self.fsck(dir + "/disk.img", offset: offset)
        #expect(status == 0, "e2fsck -fn:\n\(output)")
    }
}
