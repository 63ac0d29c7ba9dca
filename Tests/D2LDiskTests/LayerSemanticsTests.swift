import CExt2fs
import D2LDisk
import D2LDiskModel
import D2LExt4
import D2LImage
import Foundation
import Testing

/// Layer semantics that used to go wrong (issue 14): each test writes its own layers, writes
/// them into ext4, reads the result back and has e2fsck check it.
@Suite("Layer semantics through to ext4")
struct LayerSemanticsTests {
    static let symlinkType: UInt16 = 0o120000
    static let directoryType: UInt16 = 0o040000

    @Test("a later layer writes through the image's symlinks: merged /usr, absolute and escaping targets")
    func pathsThroughSymlinks() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let (tree, fs) = try fixture.build([
            [
                TarEntry("usr", .directory), TarEntry("usr/bin", .directory),
                TarEntry("usr/bin/ls", .file(Array("LS".utf8)), mode: 0o755),
                TarEntry("bin", .symlink("usr/bin")),
                TarEntry("var", .directory),
                TarEntry("var/run", .symlink("/run")),  // absolute; /run does not exist yet
                TarEntry("opt/real", .directory),
                TarEntry("etc", .directory),
                TarEntry("etc/x", .symlink("/opt/real")),
                TarEntry("up", .symlink("../../../../srv")),  // ".." stops at the image root
                TarEntry("chain", .symlink("bin")),  // a symlink to a symlink
                .file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
                TarEntry("etc/pw", .symlink("/etc/passwd")),  // a symlink to a file
                TarEntry("etc/pw2", .symlink("pw3")),  // and a chain to it
                TarEntry("etc/pw3", .symlink("../etc/passwd")),
            ],
            [
                TarEntry("bin/tool", .file(Array("TOOL".utf8)), mode: 0o755),
                .file("var/run/pid", "42"),
                .file("etc/x/f", "through an absolute link"),
                .file("up/escaped", "inside"),
                .file("chain/other", "two hops"),
                TarEntry("bin/sh", .hardlink("usr/bin/ls")),  // a hard link placed through a symlink
                .file("etc/pw/f", "the link becomes a directory"),
                .file("etc/pw2/g", "so does the first link of a chain"),
            ],
        ])
        // The system's symlinks are still symlinks, and what the layer wrote is behind them.
        #expect(try fs.stat("bin").type == Self.symlinkType)
        #expect(try fs.symlinkTarget("bin") == "usr/bin")
        #expect(try fs.list("usr/bin") == ["ls", "other", "sh", "tool"])
        #expect(try fs.read("usr/bin/tool") == Array("TOOL".utf8))
        #expect(try fs.read("usr/bin/other") == Array("two hops".utf8))
        #expect(try fs.stat("usr/bin/sh").ino == (try fs.stat("usr/bin/ls").ino))
        #expect(try fs.stat("var/run").type == Self.symlinkType)
        #expect(try fs.read("run/pid") == Array("42".utf8))
        #expect(try fs.stat("etc/x").type == Self.symlinkType)
        #expect(try fs.read("opt/real/f") == Array("through an absolute link".utf8))
        #expect(try fs.read("srv/escaped") == Array("inside".utf8))
        // A symlink to a file is replaced, never the file it points to.
        #expect(try fs.read("etc/passwd") == Array("root:x:0:0::/root:/bin/sh\n".utf8))
        #expect(try fs.stat("etc/pw").type == Self.directoryType)
        #expect(try fs.read("etc/pw/f") == Array("the link becomes a directory".utf8))
        #expect(try fs.stat("etc/pw2").type == Self.directoryType)
        #expect(try fs.list("etc/pw2") == ["g"])
        #expect(try fs.symlinkTarget("etc/pw3") == "../etc/passwd")
        #expect(try fs.list("etc") == ["passwd", "pw", "pw2", "pw3", "x"])
        #expect(try fs.list("") == ["bin", "chain", "etc", "lost+found", "opt", "run", "srv", "up", "usr", "var"])
        #expect(tree.placement(of: EntryRef(layer: 1, ordinal: 1)) == ImagePath("usr/bin/tool"))
        try TreeWriterTests.expectClean(fixture)
    }

    @Test("an explicit directory entry in a later layer replaces a symlink, as Docker and containerd do")
    func directoryEntryReplacesSymlink() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let (_, fs) = try fixture.build([
            [TarEntry("usr/lib", .directory), .file("usr/lib/libc", "C"), TarEntry("lib", .symlink("usr/lib"))],
            [TarEntry("lib", .directory), .file("lib/own", "own")],
        ])
        #expect(try fs.stat("lib").type == Self.directoryType)
        #expect(try fs.list("lib") == ["own"])
        #expect(try fs.list("usr/lib") == ["libc"])
        try TreeWriterTests.expectClean(fixture)
    }

    @Test("a symlink loop on an entry's path is refused, naming the entry and the layer")
    func symlinkLoop() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let layers = try fixture.layers([
            [TarEntry("a", .symlink("b")), TarEntry("b", .symlink("/a"))],
            [.file("a/f", "never written")],
        ])
        #expect {
            try LayerFlattener().scan(layers)
        } throws: { error in
            guard case ImageError.symlinkLoop(let path, let layer)? = error as? ImageError else { return false }
            let text = "\(error)"
            return path == "/a" && layer == "layer 1" && text.contains("symlink loop") && text.contains("layer 1")
        }
    }

    @Test("a hard link to a symlink, a device or a FIFO is a second name for the same inode")
    func hardlinksToOtherKinds() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let (_, fs) = try fixture.build([
            [
                TarEntry("s", .symlink("target")),
                TarEntry("s2", .hardlink("s")),
                TarEntry("dev/null", .characterDevice(1, 3), mode: 0o666),
                TarEntry("dev/null2", .hardlink("dev/null")),
                TarEntry("disk", .blockDevice(8, 0), mode: 0o660),
                TarEntry("fifo", .fifo),
                TarEntry("fifo2", .hardlink("fifo")),
                TarEntry("gone", .symlink("old target")),
            ],
            [
                TarEntry("disk2", .hardlink("disk")),  // across layers
                TarEntry("kept", .hardlink("gone")),
            ],
            [.file("gone", "replaced: the link keeps the old symlink")],
        ])
        for (a, b, type) in [
            ("s", "s2", Self.symlinkType), ("dev/null", "dev/null2", UInt16(0o020000)),
            ("disk", "disk2", UInt16(0o060000)), ("fifo", "fifo2", UInt16(0o010000)),
        ] {
            let first = try fs.stat(a)
            let second = try fs.stat(b)
            #expect(first.ino == second.ino, "\(a) and \(b) are separate inodes")
            #expect(first.links == 2)
            #expect(first.type == type)
        }
        #expect(try fs.symlinkTarget("s2") == "target")
        #expect(try fs.stat("kept").type == Self.symlinkType)
        #expect(try fs.stat("kept").links == 1)
        #expect(try fs.symlinkTarget("kept") == "old target")
        #expect(try fs.read("gone") == Array("replaced: the link keeps the old symlink".utf8))
        // The directory entries carry the inode's type (e2fsck checks that too).
        #expect(try fixture.debugfs("ls -l /").contains("s2"))
        try TreeWriterTests.expectClean(fixture)
    }

    @Test("a sparse file keeps its holes (pax and GNU tar sparse entries), and counts only its data for sizing")
    func sparseFilesKeepHoles() throws {
        // 64 MiB of file system: two 5 GiB files fit only when their holes stay holes.
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let size = 5 << 30
        let head = TreeWriterTests.pattern(4096, seed: 11)  // across two blocks: starts 100 bytes in
        let tail = TreeWriterTests.pattern(4096 - 100, seed: 13)  // ends the file, mid-block
        // Many regions: an extent tree deeper than the inode's four extents, data written across them.
        let pieces = (0..<600).map { (offset: $0 * 65536 + ($0 % 7) * 1000, bytes: TreeWriterTests.pattern(300 + $0, seed: UInt32($0))) }
        var layers = try fixture.layers([
            [
                TarEntry("pax", .sparse(size: size, data: [((1 << 20) + 100, head), (size - tail.count, tail)])),
                TarEntry("many", .sparse(size: 600 * 65536, data: pieces)),
            ]
        ])
        // GNU tar's own sparse format ('S' headers), from a file with holes made by truncate.
        let source = fixture.directory + "/gnu-src"
        try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
        let gnuFile = source + "/gnu"
        try Data(head).write(to: URL(fileURLWithPath: gnuFile))
        #expect(try fixture.run("truncate", "-s", "\(size)", gnuFile).0 == 0)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: gnuFile))
        try handle.seek(toOffset: UInt64(3 << 30))
        handle.write(Data(tail))
        try handle.close()
        // The same file read from a directory input: libarchive finds its holes (SEEK_HOLE, FIEMAP).
        layers.append(LayerSource(location: .directory(source), hasWhiteouts: false, size: 0, description: source))
        let gnuTar = fixture.directory + "/gnu.tar"
        let (status, output) = try fixture.run(
            "tar", "--sparse", "--format=gnu", "--owner=0", "--group=0", "-cf", gnuTar, "-C", source, "gnu")
        #expect(status == 0, "tar: \(output)")
        // The directory layer is read when scanned, after this: its copy is /gnu-dir, the tar's /gnu.
        #expect(try fixture.run("mv", gnuFile, source + "/gnu-dir").0 == 0)
        layers.append(LayerSource(location: .file(gnuTar), hasWhiteouts: true, size: 0, description: "gnu.tar"))

        let (tree, fs) = try fixture.build(layers)
        #expect(tree.lookup(ImagePath("pax"))?.dataRegions?.count == 2)
        #expect(tree.lookup(ImagePath("many"))?.dataRegions?.count == pieces.count)
        #expect(tree.lookup(ImagePath("pax"))?.dataBytes == UInt64(head.count + tail.count))
        // GNU tar and a directory input find data in 512-byte or file-system blocks: at most 4 KiB each.
        let manyBytes = UInt64(pieces.reduce(0) { $0 + $1.bytes.count })
        #expect(tree.lookup(ImagePath("many"))?.dataBytes == manyBytes)
        #expect(tree.stats.dataBytes - manyBytes <= UInt64(head.count + tail.count + 4 * 4096))
        // What sizes the disk: the blocks the data touches (3 + 2 + 2 + one or two per piece), not 3 x 5 GiB.
        let manyBlocks = pieces.reduce(UInt64(0)) {
            $0 + UInt64(($1.offset + $1.bytes.count - 1) / 4096 - $1.offset / 4096 + 1)
        }
        #expect(tree.stats.dataBlocks4K == 7 + manyBlocks)
        for piece in [pieces[0], pieces[1], pieces[299], pieces[599]] {
            let read = try fs.read("many", offset: UInt64(piece.offset), count: piece.bytes.count + 8)
            #expect(Array(read.prefix(piece.bytes.count)) == piece.bytes)
            #expect(read.suffix(8).allSatisfy { $0 == 0 })
        }
        #expect(try fs.stat("many").sectors >= manyBlocks * 8)
        #expect(try fs.stat("many").sectors < (manyBlocks + 8) * 8)

        let pax = try fs.stat("pax")
        #expect(pax.size == UInt64(size))
        #expect(pax.sectors == 3 * 8, "the holes were allocated: \(pax.sectors) sectors")
        let at = UInt64(1 << 20)
        let around = try fs.read("pax", offset: at, count: 8192)
        #expect(around[0..<100].allSatisfy { $0 == 0 })
        #expect(Array(around[100..<(100 + head.count)]) == head)
        #expect(around[(100 + head.count)...].allSatisfy { $0 == 0 })
        #expect(try fs.read("pax", offset: UInt64(size - tail.count), count: tail.count + 10) == tail)
        #expect(try fs.read("pax", offset: 1 << 30, count: 4096).allSatisfy { $0 == 0 })

        let gnu = try fs.stat("gnu")
        #expect(gnu.size == UInt64(size))
        #expect(gnu.sectors == 2 * 8, "the holes were allocated: \(gnu.sectors) sectors")
        #expect(try fs.read("gnu", offset: 0, count: head.count) == head)
        #expect(try fs.read("gnu", offset: 3 << 30, count: tail.count) == tail)
        #expect(try fs.read("gnu", offset: 2 << 30, count: 4096).allSatisfy { $0 == 0 })

        let fromDirectory = try fs.stat("gnu-dir")
        #expect(fromDirectory.size == UInt64(size))
        #expect(fromDirectory.sectors == 2 * 8, "the holes were allocated: \(fromDirectory.sectors) sectors")
        #expect(try fs.read("gnu-dir", offset: 0, count: head.count) == head)
        #expect(try fs.read("gnu-dir", offset: 3 << 30, count: tail.count) == tail)
        try TreeWriterTests.expectClean(fixture)
    }

    static func withXattr(_ path: String, _ name: String, _ value: [UInt8]) -> TarEntry {
        var entry = TarEntry.file(path, "data")
        entry.xattrs = [(name, value)]
        return entry
    }

    @Test("an extended attribute larger than a block is stored with ea_inode, or refused before writing")
    func largeXattrStored() throws {
        let big = TreeWriterTests.pattern(6 * 1024, seed: 17)
        let fixture = try Ext4Fixture(mkfsOptions: ["-b", "4096", "-O", "ea_inode"])
        defer { fixture.remove() }
        let layers = try fixture.layers([
            [Self.withXattr("opt/f", "user.big", big), Self.withXattr("opt/small", "user.small", [1, 2, 3])]
        ])
        let tree = try LayerFlattener().scan(layers)
        // The builder's decision: the feature for a kernel that mounts it, a refusal for one that does not.
        let needs = try TreeWriter.xattrNeeds(for: tree, blockSize: 4096, kernel: KernelVersion("6.1.0-18-amd64"))
        #expect(needs == TreeWriter.XattrNeeds(features: ["ea_inode"], valueInodes: 1))
        #expect(try TreeWriter.xattrNeeds(for: tree, blockSize: 4096, kernel: nil).features == ["ea_inode"])
        #expect {
            try TreeWriter.xattrNeeds(for: tree, blockSize: 4096, kernel: KernelVersion("4.9.0-8-amd64"))
        } throws: { error in
            guard case DiskError.xattrTooLarge(let path, let name, let size, let limit, _)? = error as? DiskError
            else { return false }
            return path == "/opt/f" && name == "user.big" && size == big.count && limit == 4060
                && "\(error)".contains("ea_inode") && "\(error)".contains("4.9.0-8-amd64")
        }
        let (_, fs) = try fixture.build(layers)
        #expect(try fs.xattr("opt/f", "user.big") == big)
        #expect(try fs.xattr("opt/small", "user.small") == [1, 2, 3])
        try TreeWriterTests.expectClean(fixture)

        // Without large attributes nothing changes.
        let plain = try LayerFlattener().scan(try fixture.layers([[Self.withXattr("f", "user.small", [1])]]))
        #expect(try TreeWriter.xattrNeeds(for: plain, blockSize: 4096, kernel: nil) == TreeWriter.XattrNeeds())
    }

    @Test("an attribute value over the kernel's 64 KiB is refused with its path, name and limit")
    func hugeXattrRefused() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let tree = try LayerFlattener().scan(
            try fixture.layers([[Self.withXattr("var/huge", "trusted.huge", [UInt8](repeating: 7, count: 70_000))]]))
        #expect {
            try TreeWriter.xattrNeeds(for: tree, blockSize: 4096, kernel: nil)
        } throws: { error in
            guard case DiskError.xattrTooLarge(let path, let name, let size, let limit, _)? = error as? DiskError
            else { return false }
            return path == "/var/huge" && name == "trusted.huge" && size == 70_000 && limit == 65536
        }
        #expect(XattrSpace.fit([.init(name: "user.a", value: [UInt8](repeating: 0, count: 1500))], blockSize: 4096) == .fits)
        let three = (0..<3).map { EntryMetadata.Xattr(name: "user.m\($0)", value: [UInt8](repeating: 0, count: 1500)) }
        #expect(XattrSpace.fit(three, blockSize: 4096) == .needsEAInode(name: "user.m0", size: 1500, limit: 4060))
    }

    @Test("a libext2fs failure says what went wrong and where, not \"Unknown code ext2 163\"")
    func ext4ErrorsNamePathAndCause() throws {
        let fixture = try Ext4Fixture()  // no ea_inode: the 6 KB value cannot be stored
        defer { fixture.remove() }
        #expect {
            try fixture.build([[Self.withXattr("opt/f", "user.big", [UInt8](repeating: 1, count: 6 * 1024))]])
        } throws: { error in
            guard case DiskError.ext4(let path, _)? = error as? DiskError else { return false }
            let text = "\(error)"
            return path == "/opt/f" && text.contains("/opt/f") && text.contains("user.big")
                && !text.contains("Unknown code") && text.contains("Insufficient space to store extended attribute data")
        }
        // EXT2_ET_EA_NO_SPACE, code 163 of the ext2 table: once "Unknown code ext2 163".
        #expect(Ext4Error.message(2_133_571_491) == "Insufficient space to store extended attribute data")
    }
}
