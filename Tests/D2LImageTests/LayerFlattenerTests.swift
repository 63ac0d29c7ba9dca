import D2LImage
import Foundation
import Testing

@Suite("Layer flattening")
struct LayerFlattenerTests {
    @Test("a .wh.NAME whiteout removes NAME from lower layers only")
    func whiteoutRemovesLowerLayerEntries() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let lower = try dir.layer("lower.tar") { t in
            try t.directory("etc")
            try t.file("etc/gone", "lower")
            try t.file("etc/again", "lower")
            try t.file("etc/kept", "lower")
            try t.directory("var/cache")
            try t.file("var/cache/big", "lower")
        }
        let upper = try dir.layer("upper.tar") { t in
            try t.whiteout("etc/gone")
            // Same layer: the whiteout may come before or after the new entry; it never hides it.
            try t.file("etc/again", "upper")
            try t.whiteout("etc/again")
            try t.whiteout("var/cache")  // a whole lower directory
            try t.whiteout("etc/never-existed")
        }
        let tree = try flatten([lower, upper])
        #expect(tree.names("etc") == ["again", "kept"])
        #expect(tree.node("etc/again")?.layer == 1)
        #expect(tree.node("etc/kept")?.layer == 0)
        #expect(tree.names("var") == [])
        #expect(tree.node("var/cache/big") == nil)
        // The markers themselves are not files of the result.
        #expect(tree.node("etc/.wh.gone") == nil)
    }

    @Test("a whiteout in the same layer does not remove what that layer adds")
    func whiteoutBeforeSameLayerEntry() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let lower = try dir.layer("lower.tar") { t in try t.file("x", "lower") }
        let upper = try dir.layer("upper.tar") { t in
            try t.whiteout("x")
            try t.file("x", "upper")
        }
        let tree = try flatten([lower, upper])
        let x = try #require(tree.node("x"))
        #expect(x.layer == 1)
        #expect(x.source == EntryRef(layer: 1, ordinal: 2))
    }

    @Test("an opaque directory hides lower-layer content and keeps its own layer's")
    func opaqueDirectory() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let lower = try dir.layer("lower.tar") { t in
            try t.directory("d")
            try t.file("d/old", "lower")
            try t.directory("d/sub")
            try t.file("d/sub/deep", "lower")
            try t.directory("d/olddir")
            try t.file("d/olddir/f", "lower")
            try t.file("other", "lower")
        }
        let upper = try dir.layer("upper.tar") { t in
            try t.directory("d", mode: 0o700)
            try t.file("d/before", "upper")  // same layer, before the marker
            try t.directory("d/sub")
            try t.file("d/sub/fresh", "upper")
            try t.opaque("d")
            try t.file("d/after", "upper")
        }
        let tree = try flatten([lower, upper])
        #expect(tree.names("d") == ["after", "before", "sub"])
        // A lower directory re-declared in the opaque layer loses its lower content too.
        #expect(tree.names("d/sub") == ["fresh"])
        #expect(tree.node("d")?.metadata.permissions == 0o700)
        #expect(tree.node("other") != nil)
        #expect(tree.node("d/.wh..wh..opq") == nil)
    }

    @Test("a later layer turns a file into a directory and back")
    func typeChanges() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let l0 = try dir.layer("0.tar") { t in
            try t.file("a", "file")
            try t.file("implicit", "file")
            try t.directory("becomes-link")
            try t.file("becomes-link/inner", "x")
        }
        let l1 = try dir.layer("1.tar") { t in
            try t.directory("a")
            try t.file("a/child", "in dir")
            // No directory entry: the file's parent replaces the lower file.
            try t.file("implicit/child", "in dir")
            try t.symlink("becomes-link", to: "/elsewhere")
        }
        let l2 = try dir.layer("2.tar") { t in try t.file("a", "file again") }

        let two = try flatten([l0, l1])
        #expect(two.node("a")?.kind == .directory)
        #expect(two.names("a") == ["child"])
        #expect(two.node("implicit")?.kind == .directory)
        #expect(two.names("implicit") == ["child"])
        #expect(two.node("becomes-link")?.kind == .symlink)
        #expect(two.node("becomes-link")?.symlinkTarget == ImagePath("/elsewhere"))

        let three = try flatten([l0, l1, l2])
        let a = try #require(three.node("a"))
        #expect(a.kind == .regular)
        #expect(a.children.isEmpty)
        #expect(a.size == UInt64("file again".utf8.count))
        #expect(three.node("a/child") == nil)
    }

    @Test("hard links within a layer share the entry that holds the data")
    func hardlinkWithinLayer() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let layer = try dir.layer("0.tar") { t in
            try t.file("bin/busybox", "BUSYBOX")
            try t.hardlink("bin/sh", to: "bin/busybox")
            try t.hardlink("bin/ls", to: "./bin/sh")  // a link to a link
        }
        let tree = try flatten([layer])
        let busybox = try #require(tree.node("bin/busybox"))
        let sh = try #require(tree.node("bin/sh"))
        let ls = try #require(tree.node("bin/ls"))
        #expect(busybox.kind == .regular)
        #expect(sh.kind == .hardlink)
        #expect(sh.linkSource == busybox.source)
        #expect(ls.linkSource == busybox.source)
        #expect(sh.size == 7)
        #expect(tree.linkSources == [try #require(busybox.source)])
        #expect(tree.stats.regularFiles == 1)
        #expect(tree.stats.hardlinks == 2)
        #expect(tree.stats.dataBytes == 7)
    }

    @Test("a hard link keeps the old content when an upper layer replaces its target's path")
    func hardlinkAcrossLayers() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let l0 = try dir.layer("0.tar") { t in
            try t.file("usr/bin/old", "OLD CONTENT")
        }
        let l1 = try dir.layer("1.tar") { t in
            try t.hardlink("usr/bin/link", to: "usr/bin/old")  // across layers
        }
        let l2 = try dir.layer("2.tar") { t in
            try t.file("usr/bin/old", "new")
        }
        let tree = try flatten([l0, l1, l2])
        let link = try #require(tree.node("usr/bin/link"))
        #expect(link.kind == .hardlink)
        #expect(link.linkSource == EntryRef(layer: 0, ordinal: 1))
        #expect(link.size == 11)
        #expect(tree.node("usr/bin/old")?.source == EntryRef(layer: 2, ordinal: 1))
        #expect(tree.linkSources == [EntryRef(layer: 0, ordinal: 1)])
        // The replaced entry still needs an inode of its own.
        #expect(tree.stats.regularFiles == 2)
        #expect(tree.stats.dataBytes == 11 + 3)
    }

    @Test("a hard link to a missing target is refused, naming the layer, the link and its target")
    func hardlinkToMissingTarget() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let layer = try dir.layer("0.tar") { t in try t.hardlink("dangling", to: "nowhere") }
        #expect {
            try flatten([layer])
        } throws: { error in
            let text = "\(error)"
            return text.contains("0.tar") && text.contains("dangling") && text.contains("nowhere")
        }
    }

    @Test("long names and paths survive")
    func longNames() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let long = String(repeating: "n", count: 200)
        let deep = (0..<3).map { String(repeating: Character(String($0)), count: 100) }.joined(separator: "/")
        let layer = try dir.layer("0.tar") { t in
            try t.file("d/" + long, "long name")
            try t.file(deep + "/" + long, "long path")
            try t.symlink("link", to: deep + "/" + long)
        }
        let tree = try flatten([layer])
        #expect(tree.node("d/" + long)?.size == 9)
        #expect((deep + "/" + long).utf8.count > 255)
        #expect(tree.node(deep + "/" + long)?.size == 9)
        #expect(tree.node("link")?.symlinkTarget == ImagePath(deep + "/" + long))
        #expect(tree.resolve(ImagePath("link"))?.0 == ImagePath(deep + "/" + long))
    }

    @Test("names that are not UTF-8 survive byte for byte")
    func nonUTF8Names() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let latin1: [UInt8] = [0x66, 0xe9, 0x74, 0xe9]  // "fete" with ISO-8859-1 accents
        let broken: [UInt8] = [0x64, 0xff, 0xfe]
        let layer = try dir.layer("0.tar") { t in
            try t.file(latin1, Array("latin-1".utf8))
            try t.file(broken + [UInt8(ascii: "/")] + latin1, Array("nested".utf8))
        }
        let tree = try flatten([layer])
        let names = Set(tree.root.children.keys)
        #expect(names == [latin1, broken])
        #expect(tree.lookup(latin1)?.size == 7)
        #expect(tree.lookup(broken + [UInt8(ascii: "/")] + latin1)?.size == 6)
        #expect(String(bytes: latin1, encoding: .utf8) == nil)
    }

    @Test("a name with '..' is refused (as Docker refuses a layer that breaks out); absolute and ./ names stay inside")
    func dotDotPathsRefused() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        for bad in ["../escape", "a/../../escape2"] {
            let layer = try dir.layer("bad.tar") { t in try t.file(bad, "bad") }
            #expect {
                try flatten([layer])
            } throws: { error in
                "\(error)".contains("bad.tar") && "\(error)".contains(bad) && "\(error)".contains("'..'")
            }
        }
        let layer = try dir.layer("0.tar") { t in
            try t.file("./ok", "good")
            try t.file("/abs/ok", "good")
        }
        let tree = try flatten([layer])
        #expect(tree.names("") == ["abs", "ok"])
        #expect(tree.node("abs/ok") != nil)
    }

    @Test("owners, modes, times, xattrs and special files come through")
    func metadata() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let capability: [UInt8] = [0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00] + [UInt8](repeating: 0, count: 12)
        let layer = try dir.layer("0.tar") { t in
            try t.directory("", mode: 0o755)
            try t.file(
                Array("bin/ping".utf8), Array("PING".utf8),
                meta: .init(
                    mode: 0o4755, uid: 70000, gid: 80000, mtime: 1_234_567_890, nanoseconds: 123_456_789,
                    xattrs: [("security.capability", capability), ("user.note", Array("hi".utf8))]))
            try t.directory("tmp", mode: 0o1777)
            try t.file("usr/bin/crontab", "", mode: 0o2755)
            try t.characterDevice("dev/null", major: 1, minor: 3)
            try t.characterDevice("dev/big", major: 300, minor: 70000)
            try t.blockDevice("dev/sda", major: 8, minor: 0)
            try t.fifo("run/initctl", mode: 0o600)
        }
        let tree = try flatten([layer])
        let ping = try #require(tree.node("bin/ping"))
        #expect(ping.metadata.permissions == 0o4755)
        #expect(ping.metadata.uid == 70000)
        #expect(ping.metadata.gid == 80000)
        #expect(ping.metadata.mtime == 1_234_567_890)
        #expect(ping.metadata.mtimeNanoseconds == 123_456_789)
        // libarchive reports an xattr twice when its pax writer stored both LIBARCHIVE. and SCHILY. records.
        let xattrs = Dictionary(ping.metadata.xattrs.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a })
        #expect(Set(ping.metadata.xattrs.map(\.name)) == ["security.capability", "user.note"])
        #expect(ping.metadata.xattrs.allSatisfy { xattrs[$0.name] == $0.value })
        #expect(xattrs["security.capability"] == capability)
        #expect(xattrs["user.note"] == Array("hi".utf8))
        #expect(tree.node("tmp")?.metadata.permissions == 0o1777)
        #expect(tree.node("usr/bin/crontab")?.metadata.permissions == 0o2755)
        #expect(tree.node("dev/null")?.entryKind == .characterDevice(major: 1, minor: 3))
        #expect(tree.node("dev/big")?.entryKind == .characterDevice(major: 300, minor: 70000))
        #expect(tree.node("dev/sda")?.entryKind == .blockDevice(major: 8, minor: 0))
        #expect(tree.node("run/initctl")?.entryKind == .fifo)
        #expect(tree.node("run/initctl")?.metadata.permissions == 0o600)
        #expect(tree.stats.specials == 4)
        // Directories no layer declared get defaults.
        #expect(tree.node("dev")?.source == nil)
        #expect(tree.node("dev")?.metadata.permissions == 0o755)
    }

    @Test("a root file system tar has no whiteouts: .wh. files are ordinary files")
    func rootfsHasNoWhiteouts() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let lower = try dir.layer("0.tar", whiteouts: false) { t in
            try t.file("a", "a")
            try t.file(".wh.a", "")
        }
        let tree = try flatten([lower])
        #expect(tree.names("") == [".wh.a", "a"])
    }

    @Test("a sparse file's data comes back with its holes filled with zeros")
    func sparseFileData() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let size = 3 << 20
        let layer = try dir.layer("0.tar") { t in
            try t.sparseFile("sparse", size: size, extents: [(0, 4096), (size - 8192, 8192)], fill: 0xab)
        }
        let tree = try flatten([layer])
        #expect(tree.node("sparse")?.size == UInt64(size))
        let data = try #require(try contents(of: layer)["sparse"])
        #expect(data.count == size)
        #expect(data[0..<4096].allSatisfy { $0 == 0xab })
        #expect(data[4096..<(size - 8192)].allSatisfy { $0 == 0 })
        #expect(data[(size - 8192)...].allSatisfy { $0 == 0xab })
    }

    @Test("a file whose data alone exceeds the output's room is refused at its header; a sparse file counts its data only")
    func dataLimitRefusesAtTheHeader() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let size = 3 << 20
        let layer = try dir.layer("0.tar") { t in
            try t.file("small", "small")
            try t.sparseFile("sparse", size: size, extents: [(0, 4096)], fill: 0xab)
            try t.file(Array("big".utf8), [UInt8](repeating: 1, count: 2 << 20))
        }
        var flattener = LayerFlattener()
        flattener.dataLimit = 1 << 20
        #expect {
            _ = try flattener.scan([layer])
        } throws: { error in
            guard case ImageError.fileLargerThanOutput(let path, _, let bytes, let limit) = error else { return false }
            return path == "/big" && bytes == 2 << 20 && limit == 1 << 20
        }
        flattener.dataLimit = 4 << 20
        #expect(try flattener.scan([layer]).node("big") != nil)
    }

    @Test("whiteouts, opaque markers and hard-link targets are found through the image's symlinks")
    func whiteoutsThroughSymlinks() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let lower = try dir.layer("0.tar") { t in
            try t.directory("usr/bin")
            try t.file("usr/bin/ls", "ls")
            try t.file("usr/bin/cat", "cat")
            try t.directory("usr/lib")
            try t.file("usr/lib/old", "old")
            try t.symlink("bin", to: "usr/bin")
            try t.symlink("lib", to: "/usr/lib")
            try t.directory("usr/share")
            try t.symlink("usr/local", to: "./../usr/./")  // "..", "." and a trailing slash
        }
        let upper = try dir.layer("1.tar") { t in
            try t.whiteout("bin/ls")
            try t.opaque("lib")
            try t.file("lib/new", "new")
            try t.hardlink("bin/kitten", to: "bin/cat")
            try t.file("usr/local/share/doc", "doc")
        }
        let tree = try flatten([lower, upper])
        #expect(tree.names("usr/bin") == ["cat", "kitten"])
        #expect(tree.names("usr/lib") == ["new"])
        #expect(tree.node("bin")?.kind == .symlink)
        #expect(tree.node("lib")?.kind == .symlink)
        let kitten = try #require(tree.node("usr/bin/kitten"))
        #expect(kitten.linkSource == tree.node("usr/bin/cat")?.source)
        #expect(tree.placement(of: EntryRef(layer: 1, ordinal: 3)) == ImagePath("usr/lib/new"))
        #expect(tree.placement(of: EntryRef(layer: 0, ordinal: 2)) == nil)
        #expect(tree.names("usr/share") == ["doc"])
        #expect(tree.placement(of: EntryRef(layer: 1, ordinal: 5)) == ImagePath("usr/share/doc"))
    }

    @Test("a sparse map is sorted, clipped to the size and merged; its blocks count shared blocks once")
    func sparseMapNormalised() throws {
        let regions: [Range<UInt64>] = [9000..<9100, 0..<100, 50..<200, 200..<300, 5000..<5000, 20_000..<30_000]
        let normalised = LayerEntry.normaliseRegions(regions, size: 25_000)
        #expect(normalised == [0..<300, 9000..<9100, 20_000..<25_000])
        // Blocks 0, 2, 4 to 6 (4 KiB), and two regions inside one block count it once.
        #expect(LayerEntry.blocks(of: normalised, blockSize: 4096) == 5)
        #expect(LayerEntry.blocks(of: [0..<10, 100..<200, 4095..<4097], blockSize: 4096) == 2)

        // What the flattener keeps from a sparse entry, and what sizes the disk.
        let dir = try Scratch()
        defer { dir.remove() }
        let size = 8 << 20  // TarBuilder holds the whole file in memory
        let layer = try dir.layer("0.tar") { t in
            try t.sparseFile("huge", size: size, extents: [(0, 100), (size - 4096, 4096)], fill: 0x5a)
        }
        let tree = try flatten([layer])
        #expect(tree.node("huge")?.dataRegions == [0..<100, UInt64(size - 4096)..<UInt64(size)])
        #expect(tree.stats.dataBytes == 4196)
        #expect(tree.stats.dataBlocks4K == 2)
    }
}
