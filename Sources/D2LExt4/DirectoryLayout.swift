/// A directory's blocks as ext4 stores them, laid out in memory from its list of names.
///
/// A directory whose names fit in one block gets one linear block ("." and ".." first). A larger
/// one gets an htree when the file system has `dir_index` (the kernel and e2fsck expect large
/// directories hashed): block 0 is the dx_root, then the leaves (the names sorted by hash, each
/// leaf full), then, when the leaves outnumber what the root can point to, a level of index
/// nodes. Without `dir_index` the names fill linear blocks one after the other.
///
/// Checksum fields (the leaf tail's and the dx tail's) are left zero: libext2fs fills them in as
/// it writes each block (`ext2fs_write_dir_block4`). The layout mirrors e2fsck's own rebuild of a
/// directory (rehash.c), so what it writes is what `e2fsck -fD` would.
struct DirectoryLayout {
    static let directoryType: UInt8 = 2

    /// What the file system asks of a directory block.
    struct Format {
        var blockSize: Int
        /// metadata_csum: a 12-byte tail ends each leaf, an 8-byte dx tail each index block.
        var checksums: Bool
        /// The filetype feature: entries carry their file's type.
        var fileTypes: Bool
        /// dir_index: large directories are hashed.
        var indexed: Bool
        /// How many levels of index nodes may lie under the root: 1, or 2 with largedir.
        var maxIndirectLevels: Int
        /// The hash version the dx_root records (the superblock's default).
        var hashVersion: UInt8
    }

    /// The blocks, one after another.
    private(set) var bytes: [UInt8] = []
    let blockSize: Int
    private let zeroBlock: [UInt8]
    /// Whether the directory is an htree (its inode needs EXT2_INDEX_FL).
    private(set) var isIndexed = false
    /// Index levels under the root (0: the root points at leaves).
    private(set) var indirectLevels = 0

    var blockCount: Int { bytes.count / blockSize }

    /// The record length of a name: an 8-byte header and the name, padded to 4 bytes.
    static func recordLength(_ nameLength: Int) -> Int { (8 + nameLength + 3) & ~3 }

    /// Lays out `directory` (whose ".." is `parent`) holding `entries`, whose names lie in `names`.
    /// `hash` gives a name's (major, minor) hash with the file system's algorithm and seed.
    ///
    /// - Throws: `Ext4Error.duplicateName` when a name occurs twice, `Ext4Error.directoryTooLarge`
    ///   when the names need more index levels than the file system allows.
    init(
        directory: UInt32, parent: UInt32, entries: [DirectoryTable.Entry], names: [UInt8], format: Format,
        hash: (UnsafeRawBufferPointer) throws -> (major: UInt32, minor: UInt32)
    ) throws {
        blockSize = format.blockSize
        zeroBlock = [UInt8](repeating: 0, count: format.blockSize)
        try names.withUnsafeBytes { names in
            func name(_ e: DirectoryTable.Entry) -> UnsafeRawBufferPointer {
                UnsafeRawBufferPointer(rebasing: names[Int(e.nameStart)..<Int(e.nameStart) + Int(e.nameLength)])
            }
            let tail = format.checksums ? 12 : 0
            let total = entries.reduce(0) { $0 + Self.recordLength(Int($1.nameLength)) }
            if total <= blockSize - tail - 24 || !format.indexed {
                try Self.checkUnique(entries, directory: directory, name: name)
                _ = pack(Array(entries.indices), entries, name: name, format: format, dots: (directory, parent))
                return
            }

            // An htree: names sorted by (hash, minor hash, name), as e2fsck sorts them.
            var keyed: [(major: UInt32, minor: UInt32, index: Int)] = []
            keyed.reserveCapacity(entries.count)
            for (index, entry) in entries.enumerated() {
                let (major, minor) = try hash(name(entry))
                keyed.append((major, minor, index))
            }
            keyed.sort { a, b in
                if a.major != b.major { return a.major < b.major }
                if a.minor != b.minor { return a.minor < b.minor }
                return Self.precedes(name(entries[a.index]), name(entries[b.index]))
            }
            for i in keyed.indices.dropFirst()
            where keyed[i].major == keyed[i - 1].major && keyed[i].minor == keyed[i - 1].minor
                && name(entries[keyed[i].index]).elementsEqual(name(entries[keyed[i - 1].index]))
            {
                throw Ext4Error.duplicateName(directory: directory, name: Array(name(entries[keyed[i].index])))
            }
            isIndexed = true
            let root = appendBlock()
            let starts = pack(keyed.map(\.index), entries, name: name, format: format, dots: nil)
            // Each leaf is indexed by its first name's hash; when the previous leaf ends with the
            // same hash, the low bit says "continued" so that a lookup reads both leaves.
            var level: [(hash: UInt32, block: UInt32)] = starts.enumerated().map { leaf, start in
                var h = keyed[start].major
                if start > 0, keyed[start - 1].major == h { h |= 1 }
                return (h, UInt32(root + 1 + leaf))
            }
            let dxTail = format.checksums ? 8 : 0
            let rootLimit = (blockSize - 32 - dxTail) / 8
            let nodeLimit = (blockSize - 8 - dxTail) / 8
            while level.count > rootLimit {
                indirectLevels += 1
                guard indirectLevels <= format.maxIndirectLevels else {
                    throw Ext4Error.directoryTooLarge(directory: directory, names: entries.count)
                }
                var upper: [(hash: UInt32, block: UInt32)] = []
                for start in stride(from: 0, to: level.count, by: nodeLimit) {
                    let node = appendBlock()
                    let base = node * blockSize
                    // A fake empty entry spanning the block hides the index from linear readers.
                    put32(0, at: base)
                    put16(recordLengthField(blockSize), at: base + 4)
                    writeIndex(at: base + 8, limit: nodeLimit, level[start..<min(start + nodeLimit, level.count)])
                    upper.append((level[start].hash, UInt32(node)))
                }
                level = upper
            }
            // dx_root: "." and ".." (which spans the rest of the block), dx_root_info, the index.
            writeEntry(at: 0, ino: directory, recordLength: 12, name: [UInt8(ascii: ".")], type: Self.directoryType, format)
            writeEntry(
                at: 12, ino: parent, recordLength: blockSize - 12, name: [UInt8(ascii: "."), UInt8(ascii: ".")],
                type: Self.directoryType, format)
            put32(0, at: 24)  // reserved_zero
            bytes[28] = format.hashVersion
            bytes[29] = 8  // info_length
            bytes[30] = UInt8(indirectLevels)
            bytes[31] = 0  // unused_flags
            writeIndex(at: 32, limit: rootLimit, level[...])
        }
    }

    /// Fills blocks with the entries in `order`: a new block when the next record does not fit,
    /// the last record of a block stretched to its end, a checksum tail when asked. Returns the
    /// position in `order` where each block starts.
    private mutating func pack(
        _ order: [Int], _ entries: [DirectoryTable.Entry], name: (DirectoryTable.Entry) -> UnsafeRawBufferPointer,
        format: Format, dots: (directory: UInt32, parent: UInt32)?
    ) -> [Int] {
        let usable = blockSize - (format.checksums ? 12 : 0)
        var block = appendBlock()
        var offset = 0
        var last = -1
        var starts = [0]
        if let dots {
            writeEntry(
                at: 0, ino: dots.directory, recordLength: 12, name: [UInt8(ascii: ".")], type: Self.directoryType,
                format)
            writeEntry(
                at: 12, ino: dots.parent, recordLength: 12, name: [UInt8(ascii: "."), UInt8(ascii: ".")],
                type: Self.directoryType, format)
            last = 12
            offset = 24
        }
        for (position, index) in order.enumerated() {
            let entry = entries[index]
            let length = Self.recordLength(Int(entry.nameLength))
            if offset + length > usable {
                close(block, last: last, usable: usable, format)
                block = appendBlock()
                offset = 0
                last = -1
                starts.append(position)
            }
            let at = block * blockSize + offset
            writeEntry(at: at, ino: entry.ino, recordLength: length, name: name(entry), type: entry.fileType, format)
            last = at
            offset += length
        }
        close(block, last: last, usable: usable, format)
        return starts
    }

    /// Stretches a block's last record to the end of its space and adds the checksum tail.
    private mutating func close(_ block: Int, last: Int, usable: Int, _ format: Format) {
        let base = block * blockSize
        if last >= 0 {
            put16(recordLengthField(usable - (last - base)), at: last + 4)
        } else {
            put16(recordLengthField(usable), at: base + 4)  // an empty block: one unused record
        }
        if format.checksums {
            // ext4_dir_entry_tail: inode 0, rec_len 12, name_len 0, file type 0xDE, checksum.
            let t = base + blockSize - 12
            put32(0, at: t)
            put16(12, at: t + 4)
            bytes[t + 6] = 0
            bytes[t + 7] = 0xDE
            put32(0, at: t + 8)
        }
    }

    private mutating func writeEntry<Name: Collection<UInt8>>(
        at offset: Int, ino: UInt32, recordLength: Int, name: Name, type: UInt8, _ format: Format
    ) {
        put32(ino, at: offset)
        put16(recordLengthField(recordLength), at: offset + 4)
        bytes[offset + 6] = UInt8(name.count)
        bytes[offset + 7] = format.fileTypes ? type : 0
        bytes.withUnsafeMutableBytes { out in
            UnsafeMutableRawBufferPointer(rebasing: out[(offset + 8)..<(offset + 8 + name.count)]).copyBytes(from: name)
        }
    }

    /// count/limit, the first entry's block (its hash is implied), then (hash, block) pairs.
    private mutating func writeIndex(at offset: Int, limit: Int, _ entries: ArraySlice<(hash: UInt32, block: UInt32)>) {
        put16(UInt16(limit), at: offset)
        put16(UInt16(entries.count), at: offset + 2)
        for (i, entry) in entries.enumerated() {
            if i > 0 { put32(entry.hash, at: offset + 8 * i) }
            put32(entry.block, at: offset + 8 * i + 4)
        }
    }

    /// rec_len as stored: lengths of 64 KiB and more (only a whole 64 KiB block) are encoded.
    private func recordLengthField(_ length: Int) -> UInt16 {
        if length < 65536 { return UInt16(length) }
        return blockSize == 65536 ? 0xFFFF : 0
    }

    private mutating func appendBlock() -> Int {
        if bytes.isEmpty { bytes.reserveCapacity(blockSize * 4) }
        bytes.append(contentsOf: zeroBlock)
        return bytes.count / blockSize - 1
    }

    private mutating func put16(_ value: UInt16, at offset: Int) {
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt16.self) }
    }

    private mutating func put32(_ value: UInt32, at offset: Int) {
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt32.self) }
    }

    /// Byte order, shorter first on a common prefix (e2fsck's name_cmp).
    private static func precedes(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        a.lexicographicallyPrecedes(b)
    }

    /// A linear directory's names are checked by sorting a copy (they fit in one block, or the
    /// file system has no dir_index).
    private static func checkUnique(
        _ entries: [DirectoryTable.Entry], directory: UInt32, name: (DirectoryTable.Entry) -> UnsafeRawBufferPointer
    ) throws {
        guard entries.count > 1 else { return }
        let byName = entries.sorted { precedes(name($0), name($1)) }
        for i in byName.indices.dropFirst() where name(byName[i]).elementsEqual(name(byName[i - 1])) {
            throw Ext4Error.duplicateName(directory: directory, name: Array(name(byName[i])))
        }
    }
}
