import CExt2fs
import D2LSupport
import Foundation

/// Writes files into an ext4 file system that lies at an offset inside a disk
/// image, through libext2fs: no mount, no loop device, no root.
///
/// File data does not go through libext2fs's block cache: blocks are
/// allocated as extents, then the data is written with pwrite straight to
/// their place in the disk file.
///
/// Names are not linked one by one (`ext2fs_link` scans the whole directory each time, which
/// makes a large directory quadratic): each directory's names are kept in memory as they come,
/// and `close()` lays out every directory's blocks at once, hashed (htree) when they span more
/// than one block.
public final class Ext4Writer {
    private var fs: ext2_filsys?
    private let dataFD: Int32
    private let partitionOffset: Int64
    public let blockSize: Int
    private var goal: blk64_t = 0
    private let path: String
    /// Bytes of file data written so far.
    public private(set) var bytesWritten: UInt64 = 0
    /// When set, writeback of the data is started every this many bytes (sync_file_range, not waited
    /// for), so that a final fsync finds most of it on its way to the device already.
    public var startWritebackEvery: UInt64?
    private var sinceWriteback: UInt64 = 0
    /// Every directory's names, written out by `close()`.
    private var directoryTable = DirectoryTable()

    /// An inode number.
    public typealias Inode = UInt32
    /// The root directory's inode (2).
    public static let rootInode = Inode(EXT2_ROOT_INO)

    /// Opens the file system inside `path` at byte `offset`, read-write.
    /// `timestamp` fixes the times libext2fs writes itself (for reproducible builds).
    ///
    /// - Throws: `Ext4Error.library` when there is no ext4 file system at `offset`, `Ext4Error.io` when the file cannot be opened for writing.
    public init(path: String, offset: Int64, timestamp: Int64? = nil) throws {
        self.path = path
        partitionOffset = offset
        var handle: ext2_filsys?
        let flags = EXT2_FLAG_RW | EXT2_FLAG_64BITS
        let code = ext2fs_open2(path, "offset=\(offset)", Int32(flags), 0, 0, d2l_unix_io_manager(), &handle)
        try Ext4Error.check(code, "open \(path) at offset \(offset)")
        guard let handle else { throw Ext4Error.library(operation: "open", code: 0, message: "no handle") }
        fs = handle
        blockSize = Int(d2l_ext2_block_size(handle))
        if let timestamp { d2l_ext2_set_now(handle, timestamp) }
        try Ext4Error.check(ext2fs_read_bitmaps(handle), "read bitmaps")
        dataFD = Foundation.open(path, O_WRONLY | O_CLOEXEC)
        guard dataFD >= 0 else {
            ext2fs_close_free(&fs)
            throw Ext4Error.io(path: path, reason: String(cString: strerror(errno)))
        }
    }

    deinit {
        if fs != nil { ext2fs_close_free(&fs) }
        Foundation.close(dataFD)
    }

    /// Writes the metadata out and closes; errors here mean the file system is incomplete.
    ///
    /// Every write error is reported, but nothing is forced to the device: the disk file is a build
    /// output, left to the page cache as `cp` and `qemu-img convert` leave theirs (libext2fs's own
    /// fsync cost 0.6 s of a 0.9 s build here). `DiskBuilder` syncs the whole file when asked to.
    ///
    /// - Throws: `Ext4Error.library` when the directories or the metadata cannot be written out
    ///   (no block left), `Ext4Error.duplicateName` or `.directoryTooLarge` for a directory ext4 cannot hold.
    public func close() throws {
        guard let handle = fs else { return }
        try writeDirectories()
        let noSync = Int32(EXT2_FLAG_FLUSH_NO_SYNC)
        var code = ext2fs_flush2(handle, noSync)
        // Turning unix_io's cache off writes the blocks it still holds, and says if that failed.
        if code == 0 { code = io_channel_set_options(handle.pointee.io, "cache=off") }
        if code == 0 {
            code = ext2fs_close2(handle, noSync)
            if code != 0 { ext2fs_free(handle) }
        } else {
            ext2fs_free(handle)
        }
        fs = nil
        try Ext4Error.check(code, "close")
    }

    private var handle: ext2_filsys {
        get throws {
            guard let fs else { throw Ext4Error.library(operation: "use", code: 0, message: "file system is closed") }
            return fs
        }
    }

    // MARK: inodes

    private func fill(_ inode: inout ext2_inode_large, mode: UInt16, _ meta: FileMetadata) {
        inode.i_mode = mode | (meta.permissions & 0o7777)
        inode.i_uid = UInt16(truncatingIfNeeded: meta.uid)
        inode.osd2.linux2.l_i_uid_high = UInt16(truncatingIfNeeded: meta.uid >> 16)
        inode.i_gid = UInt16(truncatingIfNeeded: meta.gid)
        inode.osd2.linux2.l_i_gid_high = UInt16(truncatingIfNeeded: meta.gid >> 16)
        let seconds = UInt32(truncatingIfNeeded: meta.mtime)
        // Extra: 2 epoch bits (seconds beyond 32 bits), then nanoseconds << 2.
        let epoch = UInt32(truncatingIfNeeded: (meta.mtime - Int64(Int32(truncatingIfNeeded: meta.mtime))) >> 32) & 3
        let extra = (meta.mtimeNanoseconds << 2) | epoch
        inode.i_atime = seconds
        inode.i_mtime = seconds
        inode.i_ctime = seconds
        inode.i_crtime = seconds
        inode.i_extra_isize = UInt16(MemoryLayout<ext2_inode_large>.size - Int(EXT2_GOOD_OLD_INODE_SIZE))
        inode.i_atime_extra = extra
        inode.i_mtime_extra = extra
        inode.i_ctime_extra = extra
        inode.i_crtime_extra = extra
    }

    private func readInode(_ ino: ext2_ino_t) throws -> ext2_inode_large {
        var inode = ext2_inode_large()
        try withUnsafeMutablePointer(to: &inode) { p in
            try p.withMemoryRebound(to: ext2_inode.self, capacity: 1) {
                try Ext4Error.check(
                    ext2fs_read_inode_full(try handle, ino, $0, Int32(MemoryLayout<ext2_inode_large>.size)),
                    "read inode \(ino)")
            }
        }
        return inode
    }

    private func writeInode(_ ino: ext2_ino_t, _ inode: inout ext2_inode_large, new: Bool = false) throws {
        let fs = try handle
        if new {
            // write_new_inode stores only 128 bytes and stamps zero times with "now", in the
            // struct it is given: let it initialise the slot from a copy, then write ours in full.
            var scratch = inode
            try withUnsafeMutablePointer(to: &scratch) { p in
                try p.withMemoryRebound(to: ext2_inode.self, capacity: 1) {
                    try Ext4Error.check(ext2fs_write_new_inode(fs, ino, $0), "write inode \(ino)")
                }
            }
        }
        try withUnsafeMutablePointer(to: &inode) { p in
            try p.withMemoryRebound(to: ext2_inode.self, capacity: 1) {
                try Ext4Error.check(
                    ext2fs_write_inode_full(fs, ino, $0, Int32(MemoryLayout<ext2_inode_large>.size)),
                    "write inode \(ino)")
            }
        }
    }

    private func newInode(parent: ext2_ino_t, mode: UInt16, isDirectory: Bool = false) throws -> ext2_ino_t {
        let fs = try handle
        var ino: ext2_ino_t = 0
        try Ext4Error.check(ext2fs_new_inode(fs, parent, Int32(mode), nil, &ino), "allocate an inode (out of inodes?)")
        return ino
    }

    /// Adds `name` to `parent`'s list; the directory's blocks are written by `close()`.
    private func link(parent: ext2_ino_t, name: [UInt8], ino: ext2_ino_t, type: Int32) throws {
        try directoryTable.add(name, ino: ino, fileType: UInt8(type), to: parent)
    }

    /// ext4 names are 1 to 255 bytes; checked before anything is allocated for them.
    private func checkName(_ name: [UInt8]) throws(Ext4Error) {
        guard (1...255).contains(name.count) else { throw .invalidName(name: name) }
    }

    private func withCName<T>(_ name: [UInt8], _ body: (UnsafePointer<CChar>) -> T) -> T {
        (name + [0]).withUnsafeBufferPointer { buf in
            buf.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buf.count) { body($0) }
        }
    }

    // MARK: public operations

    /// Says how many names (and bytes of names) are coming, so that the memory that holds them
    /// until `close()` is allocated once.
    public func reserveNames(_ count: Int, bytes: Int) {
        directoryTable.reserve(count, bytes: bytes)
    }

    /// Sets owner, mode, times and xattrs of an existing inode (the root directory, say).
    ///
    /// - Throws: `Ext4Error.library` when libext2fs cannot read or write the inode or its attributes.
    public func setMetadata(_ ino: Inode, _ meta: FileMetadata) throws {
        try setMetadata(ino, meta, links: nil)
    }

    /// Sets metadata and, unless nil, the link count.
    private func setMetadata(_ ino: Inode, _ meta: FileMetadata, links: UInt16?) throws {
        var inode = try readInode(ino)
        fill(&inode, mode: inode.i_mode & 0o170000, meta)
        if let links { inode.i_links_count = links }
        try writeInode(ino, &inode)
        try setXattrs(ino, meta.xattrs)
    }

    /// Creates a directory and returns its inode. The directory gets its blocks when the writer is closed.
    ///
    /// - Throws: `Ext4Error.invalidName` for an empty name or one over 255 bytes, `Ext4Error.library` when no inode is left.
    public func mkdir(parent: Inode, name: [UInt8], metadata: FileMetadata) throws -> Inode {
        try checkName(name)
        let fs = try handle
        let mode = UInt16(LINUX_S_IFDIR)
        let ino = try newInode(parent: parent, mode: mode | 0o755, isDirectory: true)
        ext2fs_inode_alloc_stats2(fs, ino, 1, 1)
        var inode = ext2_inode_large()
        fill(&inode, mode: mode, metadata)
        inode.i_links_count = 2
        setEmptyExtentTree(&inode)
        try writeInode(ino, &inode, new: true)
        try setXattrs(ino, metadata.xattrs)
        directoryTable.create(ino, parent: parent)
        try link(parent: parent, name: name, ino: ino, type: EXT2_FT_DIR)
        return ino
    }

    private func setEmptyExtentTree(_ inode: inout ext2_inode_large) {
        inode.i_flags |= UInt32(EXT4_EXTENTS_FL)
        withUnsafeMutableBytes(of: &inode.i_block) { raw in
            raw.storeBytes(of: UInt16(0xF30A).littleEndian, toByteOffset: 0, as: UInt16.self)  // magic
            raw.storeBytes(of: UInt16(0).littleEndian, toByteOffset: 2, as: UInt16.self)  // entries
            raw.storeBytes(of: UInt16(4).littleEndian, toByteOffset: 4, as: UInt16.self)  // max
            raw.storeBytes(of: UInt16(0).littleEndian, toByteOffset: 6, as: UInt16.self)  // depth
        }
    }

    /// Creates a regular file of `size` bytes; `produce` hands the data over in blocks
    /// (bytes, offset in the file). `linked` false makes an inode with no name yet
    /// (a hard link adds one later).
    ///
    /// `dataRegions` (sorted, disjoint byte ranges within `size`) makes a sparse file: only the
    /// blocks those ranges touch are allocated, the rest stay holes (unmapped in the extent tree,
    /// read as zeros), and `produce` may only hand over bytes inside the ranges.
    ///
    /// - Throws: `Ext4Error.invalidName` for a name ext4 cannot hold, `Ext4Error.library` when no inode or block is left (the file system is full), `Ext4Error.io` when the data cannot be written or lies outside `dataRegions`, and what `produce` throws.
    public func createFile(
        parent: Inode, name: [UInt8], metadata: FileMetadata, size: UInt64, dataRegions: [Range<UInt64>]? = nil,
        linked: Bool = true, produce: ((UnsafeRawBufferPointer, Int64) throws -> Void) throws -> Void
    ) throws -> Inode {
        if linked { try checkName(name) }
        let fs = try handle
        let ino = try newInode(parent: parent, mode: UInt16(LINUX_S_IFREG))
        ext2fs_inode_alloc_stats2(fs, ino, 1, 0)
        var inode = ext2_inode_large()
        fill(&inode, mode: UInt16(LINUX_S_IFREG), metadata)
        inode.i_links_count = linked ? 1 : 0
        try withUnsafeMutablePointer(to: &inode) { p in
            try p.withMemoryRebound(to: ext2_inode.self, capacity: 1) {
                try Ext4Error.check(ext2fs_inode_size_set(fs, $0, Int64(size)), "set size")
            }
        }
        setEmptyExtentTree(&inode)
        try writeInode(ino, &inode, new: true)
        if linked { try link(parent: parent, name: name, ino: ino, type: EXT2_FT_REG_FILE) }

        let bs = UInt64(blockSize)
        let blockRanges = Self.blockRanges(dataRegions ?? [0..<size], blockSize: bs)
        if !blockRanges.isEmpty {
            let flags = Int32(EXT2_FALLOCATE_FORCE_INIT | EXT2_FALLOCATE_INIT_BEYOND_EOF)
            for range in blockRanges {
                try withUnsafeMutablePointer(to: &inode) { p in
                    try p.withMemoryRebound(to: ext2_inode.self, capacity: 1) {
                        try Ext4Error.check(
                            ext2fs_fallocate(fs, flags, ino, $0, goal, range.lowerBound, UInt64(range.count)),
                            "allocate \(range.count) blocks (file system full?)")
                    }
                }
            }
            let runs = try extentRuns(ino, &inode)
            if let last = runs.last { goal = last.physical + last.length }
            try writeInode(ino, &inode)
            if dataRegions != nil {
                // The blocks are not cleared when allocated: the parts of a sparse file's blocks that
                // its data does not cover must read as the zeros of the hole next to them.
                let zeros = [UInt8](repeating: 0, count: blockSize)
                try zeros.withUnsafeBytes { zero in
                    for range in blockRanges {
                        for block in Set([range.lowerBound, range.upperBound - 1]) {
                            try write(zero, at: Int64(block * bs), runs: runs, counted: false)
                        }
                    }
                }
            }
            try produce { bytes, offset in
                try self.write(bytes, at: offset, runs: runs)
            }
        }
        try setXattrs(ino, metadata.xattrs)
        return ino
    }

    private struct Run {
        var logical: UInt64
        var physical: UInt64
        var length: UInt64
    }

    private func extentRuns(_ ino: ext2_ino_t, _ inode: inout ext2_inode_large) throws -> [Run] {
        let fs = try handle
        var runs: [Run] = []
        var extentHandle: ext2_extent_handle_t?
        try withUnsafeMutablePointer(to: &inode) { p in
            try p.withMemoryRebound(to: ext2_inode.self, capacity: 1) {
                try Ext4Error.check(ext2fs_extent_open2(fs, ino, $0, &extentHandle), "open extents")
            }
        }
        defer { ext2fs_extent_free(extentHandle) }
        var extent = ext2fs_extent()
        var op = Int32(EXT2_EXTENT_ROOT)
        while ext2fs_extent_get(extentHandle, op, &extent) == 0 {
            op = Int32(EXT2_EXTENT_NEXT)
            guard extent.e_flags & UInt32(EXT2_EXTENT_FLAGS_LEAF) != 0,
                extent.e_flags & UInt32(EXT2_EXTENT_FLAGS_SECOND_VISIT) == 0
            else { continue }
            runs.append(Run(logical: extent.e_lblk, physical: extent.e_pblk, length: UInt64(extent.e_len)))
        }
        runs.sort { $0.logical < $1.logical }  // in-order already; `run(containing:in:)` depends on it
        return runs
    }

    /// The blocks `regions` (sorted byte ranges) touch, as sorted, disjoint block ranges.
    static func blockRanges(_ regions: [Range<UInt64>], blockSize: UInt64) -> [Range<UInt64>] {
        var out: [Range<UInt64>] = []
        for region in regions where !region.isEmpty {
            let blocks = (region.lowerBound / blockSize)..<((region.upperBound + blockSize - 1) / blockSize)
            if let last = out.last, blocks.lowerBound <= last.upperBound {
                out[out.count - 1] = last.lowerBound..<max(last.upperBound, blocks.upperBound)
            } else {
                out.append(blocks)
            }
        }
        return out
    }

    /// The run that maps logical block `block`: a binary search, since a sparse file can have
    /// thousands of runs and every block of data written looks one up.
    private static func run(containing block: UInt64, in runs: [Run]) -> Run? {
        var low = 0
        var high = runs.count
        while low < high {
            let middle = (low + high) / 2
            if runs[middle].logical + runs[middle].length <= block {
                low = middle + 1
            } else {
                high = middle
            }
        }
        guard low < runs.count, runs[low].logical <= block else { return nil }
        return runs[low]
    }

    private func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64, runs: [Run], counted: Bool = true) throws {
        var done = 0
        let bs = UInt64(blockSize)
        while done < bytes.count {
            let fileOffset = UInt64(offset) + UInt64(done)
            let lblk = fileOffset / bs
            guard let run = Self.run(containing: lblk, in: runs) else {
                throw Ext4Error.io(
                    path: path,
                    reason: "block \(lblk) of a file is not mapped: the layer gave data outside the file's size "
                        + "or its sparse map")
            }
            let runEnd = (run.logical + run.length) * bs
            let count = Int(min(UInt64(bytes.count - done), runEnd - fileOffset))
            // The logical block may lie past the physical one (a sparse file's data far into the file).
            let diskOffset = partitionOffset + Int64(run.physical * bs + (fileOffset - run.logical * bs))
            var written = 0
            while written < count {
                let n = pwrite(dataFD, bytes.baseAddress! + done + written, count - written, off_t(diskOffset) + off_t(written))
                guard n > 0 else { throw Ext4Error.io(path: path, reason: String(cString: strerror(errno))) }
                written += n
            }
            done += count
        }
        guard counted else { return }
        bytesWritten += UInt64(bytes.count)
        if let every = startWritebackEvery {
            sinceWriteback += UInt64(bytes.count)
            if sinceWriteback >= every {
                sinceWriteback = 0
                _ = d2l_start_writeback(dataFD)
            }
        }
    }

    /// Creates a symbolic link and returns its inode. `linked` false makes an inode with no name
    /// yet (a hard link adds one later).
    ///
    /// - Throws: `Ext4Error.invalidName` for a name ext4 cannot hold, `Ext4Error.library` when no inode or block is left.
    @discardableResult
    public func symlink(parent: Inode, name: [UInt8], target: [UInt8], metadata: FileMetadata, linked: Bool = true)
        throws -> Inode
    {
        if linked { try checkName(name) }
        let fs = try handle
        let ino = try newInode(parent: parent, mode: UInt16(LINUX_S_IFLNK))
        // No name for libext2fs to link (it would look the name up first, scanning the directory).
        let code = withCName(target) { ext2fs_symlink(fs, parent, ino, nil, $0) }
        try Ext4Error.check(code, "symlink \(String(decoding: name, as: UTF8.self))")
        if linked { try link(parent: parent, name: name, ino: ino, type: EXT2_FT_SYMLINK) }
        var meta = metadata
        meta.permissions = 0o777
        try setMetadata(ino, meta, links: linked ? 1 : 0)
        return ino
    }

    /// Creates a device node, FIFO or socket and returns its inode. `linked` false makes an inode
    /// with no name yet (a hard link adds one later).
    ///
    /// - Throws: `Ext4Error.invalidName` for a name ext4 cannot hold, `Ext4Error.library` when no inode is left.
    @discardableResult
    public func special(
        parent: Inode, name: [UInt8], kind: SpecialFileKind, metadata: FileMetadata, linked: Bool = true
    ) throws -> Inode {
        if linked { try checkName(name) }
        let fs = try handle
        let mode: UInt16
        let type: Int32
        var major: UInt32 = 0
        var minor: UInt32 = 0
        switch kind {
        case .characterDevice(let ma, let mi):
            mode = UInt16(LINUX_S_IFCHR); type = EXT2_FT_CHRDEV; major = ma; minor = mi
        case .blockDevice(let ma, let mi):
            mode = UInt16(LINUX_S_IFBLK); type = EXT2_FT_BLKDEV; major = ma; minor = mi
        case .fifo:
            mode = UInt16(LINUX_S_IFIFO); type = EXT2_FT_FIFO
        case .socket:
            mode = UInt16(LINUX_S_IFSOCK); type = EXT2_FT_SOCK
        }
        let ino = try newInode(parent: parent, mode: mode)
        ext2fs_inode_alloc_stats2(fs, ino, 1, 0)
        var inode = ext2_inode_large()
        fill(&inode, mode: mode, metadata)
        inode.i_links_count = linked ? 1 : 0
        if major < 256 && minor < 256 {
            inode.i_block.0 = major * 256 + minor
        } else {
            inode.i_block.1 = (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)
        }
        try writeInode(ino, &inode, new: true)
        if linked { try link(parent: parent, name: name, ino: ino, type: type) }
        try setXattrs(ino, metadata.xattrs)
        return ino
    }

    /// Adds another name for an existing file, symlink, device, FIFO or socket (not a directory);
    /// the directory entry gets the file type of the inode's mode.
    ///
    /// - Throws: `Ext4Error.invalidName` for a name ext4 cannot hold, `Ext4Error.library` when the inode cannot be updated.
    public func hardlink(parent: Inode, name: [UInt8], to ino: Inode) throws {
        try checkName(name)
        var inode = try readInode(ino)
        let type: Int32
        switch UInt32(inode.i_mode) & 0o170000 {
        case UInt32(LINUX_S_IFLNK): type = EXT2_FT_SYMLINK
        case UInt32(LINUX_S_IFCHR): type = EXT2_FT_CHRDEV
        case UInt32(LINUX_S_IFBLK): type = EXT2_FT_BLKDEV
        case UInt32(LINUX_S_IFIFO): type = EXT2_FT_FIFO
        case UInt32(LINUX_S_IFSOCK): type = EXT2_FT_SOCK
        default: type = EXT2_FT_REG_FILE
        }
        try link(parent: parent, name: name, ino: ino, type: type)
        inode.i_links_count += 1
        try writeInode(ino, &inode)
    }

    private func setXattrs(_ ino: ext2_ino_t, _ xattrs: [FileMetadata.Xattr]) throws {
        guard !xattrs.isEmpty else { return }
        let fs = try handle
        var h: OpaquePointer?
        try Ext4Error.check(ext2fs_xattrs_open(fs, ino, &h), "open xattrs of inode \(ino)")
        defer { ext2fs_xattrs_close(&h) }
        try Ext4Error.check(ext2fs_xattrs_read(h), "read xattrs of inode \(ino)")
        for x in xattrs {
            let code = x.value.withUnsafeBytes { ext2fs_xattr_set(h, x.name, $0.baseAddress, $0.count) }
            try Ext4Error.check(code, "set extended attribute \(x.name) (\(x.value.count) bytes)")
        }
        // Only a set larger than one attribute block can have sent values to inodes of their own.
        if d2l_ext2_has_ea_inode(fs) != 0,
            xattrs.reduce(0, { $0 + XattrSpace.entryBytes($1) }) > XattrSpace.blockCapacity(blockSize: blockSize)
        {
            try chargeValueInodes(ino)
        }
    }

    /// Adds the blocks of the inode's attribute values kept in inodes of their own (ea_inode) to its
    /// block count, as the kernel does (it charges them to the owner's quota; e2fsck expects the owner's
    /// i_blocks to include them, "i_blocks is 8, should be 24"). libext2fs leaves that to its caller.
    private func chargeValueInodes(_ ino: ext2_ino_t) throws {
        let fs = try handle
        let inodeSize = Int(d2l_ext2_inode_size(fs))
        var raw = [UInt8](repeating: 0, count: max(inodeSize, MemoryLayout<ext2_inode_large>.size))
        try raw.withUnsafeMutableBytes { buffer in
            try Ext4Error.check(
                ext2fs_read_inode_full(
                    fs, ino, buffer.baseAddress!.assumingMemoryBound(to: ext2_inode.self), Int32(inodeSize)),
                "read inode \(ino)")
        }
        func u16(_ bytes: [UInt8], _ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 }
        func u32(_ bytes: [UInt8], _ at: Int) -> Int { u16(bytes, at) | u16(bytes, at + 2) << 16 }
        /// Sizes of the values stored in inodes, from entries starting at `start` (ext4 docs, "Extended Attributes").
        func valueInodeSizes(_ bytes: [UInt8], from start: Int, to end: Int) -> [Int] {
            var sizes: [Int] = []
            var at = start
            while at + 16 <= end, u32(bytes, at) != 0 {
                let nameLength = Int(bytes[at])
                if u32(bytes, at + 4) != 0 { sizes.append(u32(bytes, at + 8)) }
                at += (16 + nameLength + 3) & ~3
            }
            return sizes
        }
        let magic = 0xEA02_0000
        var sizes: [Int] = []
        let extra = u16(raw, 128)  // i_extra_isize
        let ibody = 128 + extra
        if inodeSize > 128, ibody + 4 <= inodeSize, u32(raw, ibody) == magic {
            sizes += valueInodeSizes(raw, from: ibody + 4, to: inodeSize)
        }
        var inode = try readInode(ino)
        let block = UInt64(inode.i_file_acl) | UInt64(inode.osd2.linux2.l_i_file_acl_high) << 32
        if block != 0 {
            var data = [UInt8](repeating: 0, count: blockSize)
            try data.withUnsafeMutableBytes { buffer in
                try Ext4Error.check(
                    ext2fs_read_ext_attr3(fs, block, buffer.baseAddress, ino),
                    "read the attribute block of inode \(ino)")
            }
            if u32(data, 0) == magic { sizes += valueInodeSizes(data, from: 32, to: blockSize) }
        }
        guard !sizes.isEmpty else { return }
        let sectorsPerBlock = UInt64(blockSize / 512)
        let added = sizes.reduce(UInt64(0)) { $0 + UInt64(($1 + blockSize - 1) / blockSize) * sectorsPerBlock }
        let total = (UInt64(inode.i_blocks) | UInt64(inode.osd2.linux2.l_i_blocks_hi) << 32) + added
        inode.i_blocks = UInt32(truncatingIfNeeded: total)
        inode.osd2.linux2.l_i_blocks_hi = UInt16(truncatingIfNeeded: total >> 32)
        try writeInode(ino, &inode)
    }

    // MARK: directories

    /// Lays out and writes every directory that was created or given names, in inode order
    /// (reproducible): blocks allocated as extents after the data, checksums set by libext2fs.
    private func writeDirectories() throws {
        let fs = try handle
        let format = DirectoryLayout.Format(
            blockSize: blockSize, checksums: d2l_ext2_has_metadata_csum(fs) != 0,
            fileTypes: d2l_ext2_has_filetype(fs) != 0, indexed: d2l_ext2_has_dir_index(fs) != 0,
            maxIndirectLevels: d2l_ext2_has_largedir(fs) != 0 ? 2 : 1,
            hashVersion: UInt8(truncatingIfNeeded: d2l_ext2_def_hash_version(fs)))
        let algorithm = d2l_ext2_hash_algorithm(fs)
        let seed = d2l_ext2_hash_seed(fs)
        let hash = { (name: UnsafeRawBufferPointer) throws -> (major: UInt32, minor: UInt32) in
            var major: ext2_dirhash_t = 0
            var minor: ext2_dirhash_t = 0
            let code = ext2fs_dirhash2(
                algorithm, name.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(name.count), nil, 0, seed,
                &major, &minor)
            try Ext4Error.check(code, "hash a directory entry")
            return (major, minor)
        }
        for ino in directoryTable.directories.keys.sorted() {
            let parent: ext2_ino_t
            if let known = directoryTable.directories[ino]?.parent {
                parent = known
            } else {
                parent = try adoptExistingNames(of: ino)
            }
            guard let directory = directoryTable.directories[ino] else { continue }
            let layout = try DirectoryLayout(
                directory: ino, parent: parent, entries: directoryTable.entries(of: directory),
                names: directoryTable.names, format: format, hash: hash)
            try writeDirectory(ino, layout, subdirectories: directory.subdirectories, replacing: directory.parent == nil)
        }
        directoryTable.removeAll()
    }

    /// Puts the names a directory already holds (mkfs's root has lost+found) in front of the new
    /// ones, and returns its "..".
    private func adoptExistingNames(of ino: ext2_ino_t) throws -> ext2_ino_t {
        final class Found {
            var parent: ext2_ino_t = 0
            var entries: [(name: [UInt8], ino: ext2_ino_t, type: UInt8)] = []
        }
        let found = Found()
        let code = ext2fs_dir_iterate2(
            try handle, ino, 0, nil,
            { _, entry, dirent, _, _, _, priv in
                guard let dirent, let priv else { return 0 }
                let found = Unmanaged<Found>.fromOpaque(priv).takeUnretainedValue()
                let length = Int(dirent.pointee.name_len & 0xff)
                let type = UInt8(truncatingIfNeeded: dirent.pointee.name_len >> 8)
                if entry == DIRENT_DOT_DOT_FILE {
                    found.parent = dirent.pointee.inode
                } else if entry != DIRENT_DOT_FILE {
                    let name = Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(dirent) + 8, count: length))
                    found.entries.append((name, dirent.pointee.inode, type))
                }
                return 0
            }, Unmanaged.passUnretained(found).toOpaque())
        try Ext4Error.check(code, "read directory \(ino)")
        return try withExtendedLifetime(found) {
            for entry in found.entries.reversed() {
                try directoryTable.add(entry.name, ino: entry.ino, fileType: entry.type, to: ino, atFront: true)
            }
            return found.parent == 0 ? ino : found.parent
        }
    }

    /// Gives the directory blocks for `layout` (after freeing its old ones when `replacing`), writes
    /// them, and sets its size, index flag and link count (2, plus one per subdirectory's "..").
    private func writeDirectory(_ ino: ext2_ino_t, _ layout: DirectoryLayout, subdirectories: Int, replacing: Bool)
        throws
    {
        let fs = try handle
        var inode = try readInode(ino)
        try withUnsafeMutablePointer(to: &inode) { p in
            try p.withMemoryRebound(to: ext2_inode.self, capacity: 1) { small in
                if replacing {
                    try Ext4Error.check(ext2fs_punch(fs, ino, small, nil, 0, ~0), "free the blocks of directory \(ino)")
                }
                let flags = Int32(EXT2_FALLOCATE_FORCE_INIT | EXT2_FALLOCATE_INIT_BEYOND_EOF)
                try Ext4Error.check(
                    ext2fs_fallocate(fs, flags, ino, small, goal, 0, blk64_t(layout.blockCount)),
                    "allocate \(layout.blockCount) blocks for directory \(ino) (file system full?)")
                try Ext4Error.check(
                    ext2fs_inode_size_set(fs, small, Int64(layout.blockCount * blockSize)), "set size of directory \(ino)")
            }
        }
        let runs = try extentRuns(ino, &inode)
        if let last = runs.last { goal = last.physical + last.length }
        var block = [UInt8](repeating: 0, count: blockSize)
        try layout.bytes.withUnsafeBytes { bytes in
            for run in runs {
                for i in 0..<run.length {
                    let logical = Int(run.logical + i)
                    guard logical < layout.blockCount else { break }
                    let source = bytes[(logical * blockSize)..<((logical + 1) * blockSize)]
                    block.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: source)) }
                    // Sets the leaf's or the index block's checksum when the file system has metadata_csum.
                    let code = block.withUnsafeMutableBytes {
                        ext2fs_write_dir_block4(fs, run.physical + i, $0.baseAddress, 0, ino)
                    }
                    try Ext4Error.check(code, "write block \(logical) of directory \(ino)")
                }
            }
        }
        if layout.isIndexed {
            inode.i_flags |= UInt32(EXT2_INDEX_FL)
        } else {
            inode.i_flags &= ~UInt32(EXT2_INDEX_FL)
        }
        // Past EXT2_LINK_MAX, dir_nlink lets a directory's count stay at 1 ("many").
        let links = 2 + subdirectories
        if links < Int(EXT2_LINK_MAX) {
            inode.i_links_count = UInt16(links)
        } else if d2l_ext2_has_dir_nlink(fs) != 0 {
            inode.i_links_count = 1
        } else {
            throw Ext4Error.tooManySubdirectories(directory: ino, count: subdirectories)
        }
        try writeInode(ino, &inode)
    }

    /// Free and total blocks, for the summary.
    public var usage: (blocks: UInt64, free: UInt64) {
        guard let fs else { return (0, 0) }
        return (d2l_ext2_blocks_count(fs), d2l_ext2_free_blocks_count(fs))
    }
}
