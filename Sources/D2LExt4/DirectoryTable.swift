/// The names linked into each directory, kept in memory until the directories are written.
///
/// libext2fs's `ext2fs_link` scans a whole directory for every name it adds, so filling one
/// directory that way is quadratic. Here a name costs an append (16 bytes plus the name's bytes,
/// in two flat arrays shared by every directory) and `Ext4Writer.close()` lays out each directory's
/// blocks once, from its list.
struct DirectoryTable {
    /// One name in one directory. Entries of a directory are chained through `next`, in the order
    /// they were added.
    struct Entry {
        var ino: UInt32
        var next: UInt32
        var nameStart: UInt32
        var nameLength: UInt8
        var fileType: UInt8
    }

    struct Directory {
        /// Set for a directory this writer created; nil for one that was there before (the root,
        /// lost+found), whose existing names are read back when it is written.
        var parent: UInt32?
        var first = DirectoryTable.none
        var last = DirectoryTable.none
        var count = 0
        var subdirectories = 0
    }

    static let none = UInt32.max

    private(set) var entries: [Entry] = []
    /// Every name's bytes, one after the other.
    private(set) var names: [UInt8] = []
    private(set) var directories: [UInt32: Directory] = [:]

    /// Makes room for `count` names of `bytes` bytes in all, so that the tables are not regrown
    /// (growing doubles an array while the old one is still held).
    mutating func reserve(_ count: Int, bytes: Int) {
        entries.reserveCapacity(count)
        names.reserveCapacity(bytes)
    }

    /// Registers a directory made by the writer, so that it is written even if it stays empty.
    mutating func create(_ ino: UInt32, parent: UInt32) {
        directories[ino] = Directory(parent: parent)
    }

    /// Adds `name` (1 to 255 bytes, checked by the caller) to `directory`, after its other names
    /// or, `atFront`, before them.
    mutating func add(_ name: [UInt8], ino: UInt32, fileType: UInt8, to directory: UInt32, atFront: Bool = false)
        throws(Ext4Error)
    {
        guard entries.count < Int(Self.none), names.count + name.count <= Int(UInt32.max) else {
            throw .tooManyNames(entries.count)
        }
        let index = UInt32(entries.count)
        entries.append(
            Entry(
                ino: ino, next: Self.none, nameStart: UInt32(names.count), nameLength: UInt8(name.count),
                fileType: fileType))
        names.append(contentsOf: name)
        var dir = directories[directory] ?? Directory(parent: nil)
        if dir.last == Self.none {
            dir.first = index
            dir.last = index
        } else if atFront {
            entries[Int(index)].next = dir.first
            dir.first = index
        } else {
            entries[Int(dir.last)].next = index
            dir.last = index
        }
        dir.count += 1
        if fileType == DirectoryLayout.directoryType { dir.subdirectories += 1 }
        directories[directory] = dir
    }

    /// A directory's entries in the order they were added.
    func entries(of directory: Directory) -> [Entry] {
        var out: [Entry] = []
        out.reserveCapacity(directory.count)
        var index = directory.first
        while index != Self.none {
            let entry = entries[Int(index)]
            out.append(entry)
            index = entry.next
        }
        return out
    }

    /// Drops everything (after the directories are written).
    mutating func removeAll() {
        entries = []
        names = []
        directories = [:]
    }
}
