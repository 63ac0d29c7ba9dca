import CExt2fs
import D2LDisk
import D2LImage
import Foundation
import Testing

@testable import D2LExt4

/// Directories written by the writer's own layout (not ext2fs_link): linear up to one block,
/// hashed beyond, checked by e2fsck, debugfs and libext2fs reading them back.
@Suite("Large directories: linear blocks and htrees")
struct LargeDirectoryTests {
    static let indexFlag = UInt32(EXT2_INDEX_FL)

    static func expectClean(_ fixture: Ext4Fixture, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let (status, output) = try fixture.fsck()
        #expect(status == 0, "e2fsck -fn found problems:\n\(output)", sourceLocation: sourceLocation)
    }

    @Test("100,000 names in one directory: a two-level htree, names found anywhere in it, e2fsck clean")
    func hundredThousandNames() throws {
        let fixture = try Ext4Fixture(fsSize: 256 << 20, mkfsOptions: ["-b", "4096", "-N", "110000"])
        defer { fixture.remove() }
        // 30-byte names: about 100 to a leaf, so ~990 leaves, more than the root's 507 slots.
        let names = (0..<100_000).map { "entry-with-a-longer-name-" + String(100_000 + $0) }
        let (_, fs) = try fixture.build([
            [TarEntry("big", .directory)] + names.map { TarEntry("big/" + $0, .file([])) } + [.file("big/data", "DATA")]
        ])
        let big = try fs.stat("big")
        #expect(big.raw.i_flags & Self.indexFlag != 0)
        #expect(big.links == 2)
        let dump = try fixture.debugfs("htree_dump /big")
        #expect(dump.contains("Root node dump:"), "\(dump.prefix(500))")
        #expect(dump.contains("Indirect levels: 1"), "\(dump.prefix(500))")
        for i in [0, 1, 31_337, 50_000, 99_998, 99_999] {
            #expect(fs.inode("big/" + names[i]) != nil, "\(names[i])")
        }
        #expect(try fixture.debugfs("stat /big/" + names[77_777]).contains("Type: regular"))
        #expect(fs.inode("big/entry-with-a-longer-name-200000") == nil)
        #expect(try fs.read("big/data") == Array("DATA".utf8))
        #expect(try fs.list("big").count == 100_001)
        try Self.expectClean(fixture)
    }

    @Test(
        "a directory exactly one block full stays linear; one name more makes it an htree",
        arguments: [true, false])
    func oneBlockBoundary(checksums: Bool) throws {
        let fixture = try Ext4Fixture(mkfsOptions: ["-b", "4096", "-O", checksums ? "metadata_csum" : "^metadata_csum"])
        defer { fixture.remove() }
        // A block holds "." and ".." (24 bytes), then names, then a 12-byte checksum tail with
        // metadata_csum. 12-byte names take 20-byte records, 4-byte names 12-byte records.
        let space = 4096 - 24 - (checksums ? 12 : 0)
        let long = checksums ? 203 : 200
        let short: Int = (space - long * 20) / 12
        #expect(long * 20 + short * 12 == space)
        let longNames: [String] = (0..<long).map { "name-" + String(1_000_000 + $0) }
        let shortNames: [String] = (0..<short).map { "s" + String(100 + $0) }
        let names = longNames + shortNames
        let (_, fs) = try fixture.build([
            names.map { .file("full/" + $0, $0) } + names.map { .file("over/" + $0, $0) } + [.file("over/x", "x")]
        ])
        let full = try fs.stat("full")
        #expect(full.size == 4096)
        #expect(full.raw.i_flags & Self.indexFlag == 0)
        let over = try fs.stat("over")
        #expect(over.raw.i_flags & Self.indexFlag != 0)
        #expect(over.size == 2 * 4096)  // dx_root and one leaf: a leaf has no "." and ".." to hold
        #expect(try fs.list("full") == names.sorted())
        #expect(try fs.list("over") == (names + ["x"]).sorted())
        for name in [names[0], names[long - 1], names[names.count - 1]] {
            #expect(try fs.read("full/" + name) == Array(name.utf8))
            #expect(try fs.read("over/" + name) == Array(name.utf8))
        }
        #expect(try fixture.debugfs("htree_dump /over").contains("Root node dump:"))
        try Self.expectClean(fixture)
    }

    @Test("without dir_index a large directory is linear blocks, one after another")
    func withoutDirIndex() throws {
        let fixture = try Ext4Fixture(mkfsOptions: ["-b", "4096", "-O", "^dir_index"])
        defer { fixture.remove() }
        let names = (0..<2000).map { "file-" + String(100_000 + $0) }
        let (_, fs) = try fixture.build([names.map { .file("flat/" + $0, $0) }])
        let flat = try fs.stat("flat")
        #expect(flat.raw.i_flags & Self.indexFlag == 0)
        #expect(flat.size >= 10 * 4096)
        #expect(try fs.list("flat") == names)
        for name in [names[0], names[1000], names[1999]] { #expect(try fs.read("flat/" + name) == Array(name.utf8)) }
        try Self.expectClean(fixture)
    }

    @Test("255-byte names, non-UTF-8 names, hard links and subdirectories across hashed directories")
    func unusualNames() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let longNames = (0..<200).map { i -> String in
            let head = "\(i)-"
            return head + String(repeating: "L", count: 255 - head.count)
        }
        let rawNames: [[UInt8]] = (0..<600).map { i in
            Array("f-".utf8) + [0xE9, 0x80 + UInt8(i % 64), 0xFF, 0xC0] + Array(String(i).utf8)
        }
        let linkNames = (0..<300).map { "alias-\($0)" }
        var entries: [TarEntry] = [TarEntry("src/busybox", .file(Array("BUSYBOX".utf8)), mode: 0o755)]
        entries += longNames.map { .file("long/" + $0, $0) }
        entries += rawNames.map { name in
            var e = TarEntry("", .file(name))
            e.path = Array("raw/".utf8) + name
            return e
        }
        entries += linkNames.map { TarEntry("links/" + $0, .hardlink("src/busybox")) }
        entries += (0..<150).map { TarEntry("links/sub-\($0)", .directory) }
        entries.append(TarEntry("other/sh", .hardlink("src/busybox")))
        let (_, fs) = try fixture.build([entries])

        for dir in ["long", "raw", "links"] {
            #expect(try fs.stat(dir).raw.i_flags & Self.indexFlag != 0, "\(dir) should be hashed")
        }
        #expect(try fs.list("long") == longNames.sorted())
        for name in [longNames[0], longNames[123], longNames[199]] {
            #expect(name.utf8.count == 255)
            #expect(try fs.read("long/" + name) == Array(name.utf8))
        }
        for name in [rawNames[0], rawNames[333], rawNames[599]] {
            #expect(try fs.read(Array("raw/".utf8) + name) == name)
        }
        #expect(try fs.list("raw").count == 600)
        let busybox = try fs.stat("src/busybox")
        #expect(busybox.links == UInt16(linkNames.count + 2))
        for name in [linkNames[0], linkNames[150], linkNames[299]] {
            #expect(try fs.stat("links/" + name).ino == busybox.ino)
        }
        #expect(try fs.stat("other/sh").ino == busybox.ino)
        // 2 + one ".." per subdirectory.
        #expect(try fs.stat("links").links == 152)
        #expect(try fs.stat("links/sub-149").type == 0o040000)
        try Self.expectClean(fixture)
    }

    @Test("a name over 255 bytes is refused with its path")
    func nameTooLong() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let name = String(repeating: "x", count: 256)
        let layers = try fixture.layers([[.file("etc/ok", "ok"), .file("etc/" + name, "too long")]])
        let tree = try LayerFlattener().scan(layers)
        #expect(tree.paths(withNamesLongerThan: 255) == [ImagePath("etc/" + name)])
        #expect {
            try fixture.build(layers)
        } throws: { error in
            guard let error = error as? DiskError, case .nameTooLong = error else { return false }
            return error.description.contains("/etc/" + name)
        }
    }

    @Test("the writer refuses an empty name and one over 255 bytes")
    func writerChecksNames() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        try fixture.format()
        let writer = try Ext4Writer(path: fixture.disk, offset: fixture.offset)
        for name in [[UInt8](), [UInt8](repeating: 0x61, count: 256)] {
            #expect(throws: Ext4Error.self) {
                _ = try writer.mkdir(parent: Ext4Writer.rootInode, name: name, metadata: EntryMetadata(permissions: 0o755))
            }
            #expect(throws: Ext4Error.self) {
                try writer.symlink(
                    parent: Ext4Writer.rootInode, name: name, target: Array("x".utf8),
                    metadata: EntryMetadata(permissions: 0o777))
            }
        }
        try writer.close()
        try Self.expectClean(fixture)
    }
}

/// The layout alone, with hashes chosen by the test.
@Suite("Directory block layout")
struct DirectoryLayoutTests {
    static func table(_ names: [[UInt8]], in directory: UInt32 = 100) throws -> DirectoryTable {
        var table = DirectoryTable()
        table.create(directory, parent: 2)
        for (i, name) in names.enumerated() { try table.add(name, ino: UInt32(1000 + i), fileType: 1, to: directory) }
        return table
    }

    static func layout(
        _ table: DirectoryTable, blockSize: Int = 4096, checksums: Bool = true, maxIndirectLevels: Int = 1,
        hash: (UnsafeRawBufferPointer) -> (major: UInt32, minor: UInt32)
    ) throws -> DirectoryLayout {
        let dir = try #require(table.directories[100])
        return try DirectoryLayout(
            directory: 100, parent: 2, entries: table.entries(of: dir), names: table.names,
            format: .init(
                blockSize: blockSize, checksums: checksums, fileTypes: true, indexed: true,
                maxIndirectLevels: maxIndirectLevels, hashVersion: 1),
            hash: hash)
    }

    /// A cheap stand-in for the file system's hash (FNV-1a, low bit clear as ext4's are).
    static func fnv(_ name: UnsafeRawBufferPointer) -> (major: UInt32, minor: UInt32) {
        var h: UInt32 = 2_166_136_261
        for byte in name { h = (h ^ UInt32(byte)) &* 16_777_619 }
        return (h & ~1, h)
    }

    static func u16(_ bytes: [UInt8], _ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 }
    static func u32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * $1) }
    }

    @Test("leaves that continue a run of equal hashes are marked with the low bit")
    func collisionsContinue() throws {
        let names = (0..<1000).map { Array("same-hash-\($0)".utf8) }
        let layout = try Self.layout(try Self.table(names)) { _ in (0x1234_5678, 0) }
        #expect(layout.isIndexed)
        let bytes = layout.bytes
        let count = Self.u16(bytes, 34)
        #expect(count == layout.blockCount - 1)
        for i in 1..<count { #expect(Self.u32(bytes, 32 + 8 * i) == 0x1234_5679) }
    }

    @Test("two index levels when the root cannot point at every leaf, and no third without largedir")
    func indexLevels() throws {
        // 1 KiB blocks with checksums: the root points at 123 blocks, a node at 126, a leaf holds
        // three 255-byte names: 123 * 126 * 3 names fit under one level of nodes.
        let fits = 123 * 126 * 3
        let names = (0..<(fits + 1)).map { i -> [UInt8] in
            let head = Array("\(i)-".utf8)
            return head + [UInt8](repeating: 0x6E, count: 255 - head.count)
        }
        let layout = try Self.layout(try Self.table(Array(names.prefix(fits))), blockSize: 1024, hash: Self.fnv)
        #expect(layout.indirectLevels == 1)
        #expect(layout.bytes[30] == 1)
        #expect(Self.u16(layout.bytes, 34) == 123)
        #expect(throws: Ext4Error.self) {
            _ = try Self.layout(try Self.table(names), blockSize: 1024, hash: Self.fnv)
        }
        #expect(try Self.layout(try Self.table(names), blockSize: 1024, maxIndirectLevels: 2, hash: Self.fnv).indirectLevels == 2)
    }

    @Test("a name twice in one directory is refused, linear or hashed", arguments: [10, 2000])
    func duplicates(count: Int) throws {
        let names = (0..<count).map { Array("n\($0)".utf8) } + [Array("n7".utf8)]
        #expect {
            _ = try Self.layout(try Self.table(names), hash: Self.fnv)
        } throws: { error in
            guard case Ext4Error.duplicateName(100, let name)? = error as? Ext4Error else { return false }
            return name == Array("n7".utf8)
        }
    }
}
