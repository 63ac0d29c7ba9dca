import CExt2fs
import D2LDisk
import D2LImage
import Foundation
import Testing

/// Layers flattened and written into a real ext4 (at a 1 MiB offset in a disk
/// file), then read back through libext2fs and debugfs, and checked by e2fsck.
@Suite("Writing the flattened tree into ext4")
struct TreeWriterTests {
    static func pattern(_ count: Int, seed: UInt32) -> [UInt8] {
        var x = seed | 1
        return (0..<count).map { _ in
            x ^= x << 13; x ^= x >> 17; x ^= x << 5
            return UInt8(truncatingIfNeeded: x)
        }
    }

    static func expectClean(_ fixture: Ext4Fixture, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let (status, output) = try fixture.fsck()
        #expect(status == 0, "e2fsck -fn found problems:\n\(output)", sourceLocation: sourceLocation)
    }

    @Test("file content: multi-MiB, empty, sparse, long and non-UTF-8 names")
    func content() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let big = Self.pattern((5 << 20) + 123, seed: 7)
        let sparseHead = Self.pattern(5000, seed: 3)
        let sparseMiddle = Self.pattern(4096, seed: 5)
        let longName = String(repeating: "n", count: 255)
        let deepDir = (0..<3).map { String(repeating: Character(String($0)), count: 100) }.joined(separator: "/")
        let latin1: [UInt8] = Array("fichier-".utf8) + [0xe9, 0xe9]
        var odd = TarEntry("", .file(Array("latin-1".utf8)))
        odd.path = Array("data/".utf8) + latin1
        let (_, fs) = try fixture.build([
            [
                TarEntry("data/big", .file(big)),
                TarEntry("data/empty", .file([])),
                TarEntry("data/sparse", .sparse(size: 3 << 20, data: [(0, sparseHead), (1 << 20, sparseMiddle)])),
                .file("data/" + longName, "long name"),
                .file(deepDir + "/" + longName, "long path"),
                odd,
            ]
        ])
        #expect(try fs.read("data/big") == big)
        #expect(try fs.stat("data/big").size == UInt64(big.count))
        #expect(try fs.read("data/empty") == [])
        #expect(try fs.stat("data/empty").type == 0o100000)
        let sparse = try fs.read("data/sparse")
        var expected = [UInt8](repeating: 0, count: 3 << 20)
        expected.replaceSubrange(0..<5000, with: sparseHead)
        expected.replaceSubrange((1 << 20)..<((1 << 20) + 4096), with: sparseMiddle)
        #expect(sparse.count == expected.count)
        #expect(sparse == expected)
        #expect(try fs.read("data/" + longName) == Array("long name".utf8))
        #expect(try fs.read(deepDir + "/" + longName) == Array("long path".utf8))
        #expect(try fs.read(Array("data/".utf8) + latin1) == Array("latin-1".utf8))
        try Self.expectClean(fixture)
    }

    @Test("modes, owners, times, symlinks, devices, FIFOs and security.capability")
    func metadata() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let capability: [UInt8] = [0x00, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00] + [UInt8](repeating: 0, count: 12)
        var ping = TarEntry("bin/ping", .file(Array("PING".utf8)), mode: 0o4755)
        ping.xattrs = [("security.capability", capability), ("user.origin", Array("test".utf8))]
        var owned = TarEntry("home/user/file", .file(Array("x".utf8)), mode: 0o640)
        owned.uid = 70000
        owned.gid = 80001
        owned.mtime = 1_234_567_890
        owned.nanoseconds = 123_456_789
        var future = TarEntry("home/user/2100", .file(Array("y".utf8)))
        future.mtime = 4_102_444_800  // beyond 2038: needs the extra epoch bits
        var root = TarEntry("", .directory, mode: 0o750)
        root.mtime = 1_600_000_000
        let longTarget = "/" + String(repeating: "t", count: 100) + "/target"
        // Around the 60 bytes an inode can hold in place of block pointers.
        let edgeTargets = [59, 60, 61].map { String(repeating: "e", count: $0) }
        var bigXattr = TarEntry("etc/labelled", .file(Array("z".utf8)))
        bigXattr.xattrs = [("user.big", TreeWriterTests.pattern(3000, seed: 11))]
        let (_, fs) = try fixture.build([
            [
                root,
                TarEntry("tmp", .directory, mode: 0o1777),
                TarEntry("usr/bin/crontab", .file(Array("C".utf8)), mode: 0o2755),
                ping, owned, future,
                TarEntry("lib", .symlink("usr/lib")),
                TarEntry("long", .symlink(longTarget)),
                TarEntry("dev/null", .characterDevice(1, 3), mode: 0o666),
                TarEntry("dev/big", .characterDevice(300, 70000), mode: 0o600),
                TarEntry("dev/sda", .blockDevice(8, 0), mode: 0o660),
                TarEntry("run/initctl", .fifo, mode: 0o600),
                bigXattr,
            ] + edgeTargets.map { TarEntry("edge\($0.count)", .symlink($0)) }
        ])
        let rootStat = try fs.stat("")
        #expect(rootStat.permissions == 0o750)
        #expect(rootStat.mtime == 1_600_000_000)
        #expect(try fs.stat("tmp").permissions == 0o1777)
        #expect(try fs.stat("tmp").type == 0o040000)
        #expect(try fs.stat("usr/bin/crontab").permissions == 0o2755)
        #expect(try fs.stat("bin/ping").permissions == 0o4755)
        #expect(try fs.xattr("bin/ping", "security.capability") == capability)
        #expect(try fs.xattr("bin/ping", "user.origin") == Array("test".utf8))
        let file = try fs.stat("home/user/file")
        #expect(file.uid == 70000)
        #expect(file.gid == 80001)
        #expect(file.permissions == 0o640)
        #expect(file.mtime == 1_234_567_890)
        #expect(file.mtimeNanoseconds == 123_456_789)
        #expect(try fs.stat("home/user/2100").mtime == 4_102_444_800)
        #expect(try fs.stat("lib").type == 0o120000)
        #expect(try fs.symlinkTarget("lib") == "usr/lib")
        #expect(try fs.symlinkTarget("long") == longTarget)
        for target in edgeTargets { #expect(try fs.symlinkTarget("edge\(target.count)") == target) }
        #expect(try fs.xattr("etc/labelled", "user.big") == TreeWriterTests.pattern(3000, seed: 11))
        #expect(try fs.stat("dev/null").type == 0o020000)
        #expect(try fs.stat("dev/null").permissions == 0o666)
        #expect(try fs.stat("dev/sda").type == 0o060000)
        #expect(try fs.stat("run/initctl").type == 0o010000)
        #expect(try fs.stat("run/initctl").permissions == 0o600)
        // Device numbers as debugfs decodes them (old and new encodings).
        #expect(try fixture.debugfs("stat /dev/null").contains("Device major/minor number: 01:03"))
        #expect(try fixture.debugfs("stat /dev/big").contains("Device major/minor number: 300:70000"))
        #expect(try fixture.debugfs("stat /dev/sda").contains("Device major/minor number: 08:00"))
        try Self.expectClean(fixture)
    }

    @Test("empty files, devices and FIFOs keep their mtime, including 0 and nanoseconds")
    func timesOfInodesWithoutData() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        func timed(_ entry: TarEntry, _ mtime: Int64, _ ns: Int) -> TarEntry {
            var e = entry
            e.mtime = mtime
            e.nanoseconds = ns
            return e
        }
        let (_, fs) = try fixture.build([
            [
                timed(TarEntry("empty", .file([])), 1_500_000_000, 250_000_000),
                timed(TarEntry("epoch", .file([])), 0, 0),
                timed(TarEntry("fifo", .fifo), 1_500_000_000, 250_000_000),
                timed(TarEntry("null", .characterDevice(1, 3)), 0, 0),
                timed(TarEntry("data", .file([1])), 1_500_000_000, 250_000_000),
            ]
        ])
        for name in ["empty", "fifo", "data"] {
            let st = try fs.stat(name)
            #expect(st.mtime == 1_500_000_000, "\(name)")
            #expect(st.mtimeNanoseconds == 250_000_000, "\(name)")
            // The creation time too is the entry's, not the build's (byte-identical rebuilds).
            #expect(st.raw.i_crtime == 1_500_000_000, "\(name)")
        }
        // Reproducible images need mtime 0 to stay 0, not become the build time.
        #expect(try fs.stat("epoch").mtime == 0)
        #expect(try fs.stat("null").mtime == 0)
        try Self.expectClean(fixture)
    }

    @Test("a directory with more names than one block holds grows")
    func largeDirectory() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let names = (0..<600).map { "usr/bin/" + String(repeating: "x", count: 80) + String($0) }
        let (_, fs) = try fixture.build([names.map { .file($0, $0) }])
        #expect(try fs.list("usr/bin").count == 600)
        #expect(try fs.stat("usr/bin").size > 4096)
        for name in [names[0], names[299], names[599]] { #expect(try fs.read(name) == Array(name.utf8)) }
        try Self.expectClean(fixture)
    }

    @Test("whiteouts and opaque directories are applied on disk")
    func whiteouts() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let (_, fs) = try fixture.build([
            [
                .file("etc/gone", "lower"), .file("etc/kept", "lower"), .file("etc/again", "lower"),
                .file("var/cache/a", "lower"), .file("var/cache/b", "lower"),
                .file("opq/old", "lower"), .file("opq/sub/deep", "lower"),
            ],
            [
                .whiteout("etc/gone"),
                .file("etc/again", "upper"),
                .whiteout("etc/again"),  // the same layer's file stays
                .whiteout("var/cache"),
                .file("opq/before", "upper"),
                .file("opq/.wh..wh..opq", ""),
                .file("opq/after", "upper"),
            ],
        ])
        #expect(try fs.list("etc") == ["again", "kept"])
        #expect(try fs.read("etc/again") == Array("upper".utf8))
        #expect(try fs.list("var") == [])
        #expect(try fs.list("opq") == ["after", "before"])
        #expect(fs.inode("opq/sub/deep") == nil)
        #expect(try fs.list("").filter { $0.hasPrefix(".wh.") } == [])
        try Self.expectClean(fixture)
    }

    @Test("a file becomes a directory and a file again across layers")
    func typeChanges() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let (_, fs) = try fixture.build([
            [.file("a", "file"), .file("b", "file"), .file("c/inner", "in dir")],
            [TarEntry("a", .directory), .file("a/child", "child"), .file("b/child", "child"), .file("c", "now a file")],
            [.file("a", "file again")],
        ])
        #expect(try fs.stat("a").type == 0o100000)
        #expect(try fs.read("a") == Array("file again".utf8))
        #expect(try fs.stat("b").type == 0o040000)
        #expect(try fs.read("b/child") == Array("child".utf8))
        #expect(try fs.stat("c").type == 0o100000)
        #expect(try fs.read("c") == Array("now a file".utf8))
        try Self.expectClean(fixture)
    }

    @Test("hard links share one inode, within a layer and across layers")
    func hardlinks() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let (_, fs) = try fixture.build([
            [
                TarEntry("bin/busybox", .file(Array("BUSYBOX".utf8)), mode: 0o755),
                TarEntry("bin/sh", .hardlink("bin/busybox")),
                TarEntry("bin/ls", .hardlink("bin/sh")),
                .file("lib/a", "A"),
            ],
            [TarEntry("lib/b", .hardlink("lib/a"))],
        ])
        let busybox = try fs.stat("bin/busybox")
        #expect(busybox.links == 3)
        #expect(try fs.stat("bin/sh").ino == busybox.ino)
        #expect(try fs.stat("bin/ls").ino == busybox.ino)
        #expect(try fs.read("bin/ls") == Array("BUSYBOX".utf8))
        #expect(try fs.stat("bin/sh").permissions == 0o755)
        #expect(try fs.stat("lib/b").ino == fs.stat("lib/a").ino)
        #expect(try fs.stat("lib/a").links == 2)
        try Self.expectClean(fixture)
    }

    @Test("a hard link keeps the old content when an upper layer replaces its target")
    func hardlinkToReplacedTarget() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let (_, fs) = try fixture.build([
            [.file("usr/bin/tool", "OLD TOOL"), TarEntry("usr/bin/alias", .hardlink("usr/bin/tool"))],
            [.file("usr/bin/tool", "new")],
        ])
        #expect(try fs.read("usr/bin/tool") == Array("new".utf8))
        #expect(try fs.read("usr/bin/alias") == Array("OLD TOOL".utf8))
        let alias = try fs.stat("usr/bin/alias")
        #expect(alias.ino != (try fs.stat("usr/bin/tool").ino))
        #expect(alias.links == 1)
        #expect(try fs.stat("usr/bin/tool").links == 1)
        try Self.expectClean(fixture)
    }

    @Test("a hard link survives when an upper layer removes its target's directory")
    func hardlinkToTargetInRemovedDirectory() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let (tree, fs) = try fixture.build([
            [.file("old/data", "KEEP ME"), TarEntry("keep", .hardlink("old/data")), .file("gone/x", "x")],
            [.whiteout("old"), .file("gone", "a file now"), TarEntry("keep2", .hardlink("keep"))],
        ])
        #expect(tree.lookup(ImagePath("keep"))?.kind == .hardlink)
        #expect(fs.inode("old") == nil)
        #expect(try fs.read("keep") == Array("KEEP ME".utf8))
        #expect(try fs.stat("keep").links == 2)
        #expect(try fs.stat("keep2").ino == (try fs.stat("keep").ino))
        try Self.expectClean(fixture)
    }

    @Test("a layer whose bytes do not match its digest is refused")
    func layerDigestMismatch() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        var layers = try fixture.layers([[.file("etc/motd", "hello")]])
        let path = fixture.directory + "/layer0.tar"
        layers[0].expectedDigest = try fixture.run("sha256sum", path).1.split(separator: " ").first.map(String.init)
        let (_, fs) = try fixture.build(layers)
        #expect(try fs.read("etc/motd") == Array("hello".utf8))

        // Change one byte of the end-of-archive padding: the entries still read, the digest differs.
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        let size = try handle.seekToEnd()
        try handle.seek(toOffset: size - 1)
        handle.write(Data([0x01]))
        try handle.close()
        #expect {
            try fixture.build(layers)
        } throws: { error in
            guard case ImageError.digestMismatch(_, let expected, let actual)? = error as? ImageError else {
                return false
            }
            return expected == layers[0].expectedDigest && actual != expected
        }
    }
}
