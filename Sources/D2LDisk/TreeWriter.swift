import D2LDiskModel
import D2LExt4
import D2LImage
import D2LSupport
import Foundation

/// Writes a flattened tree into ext4, reading each layer once, bottom first.
///
/// Directories come first (their final metadata is known from the scan);
/// then every layer is streamed and each entry that survives flattening is
/// written in place. Files under /boot go to `bootDirectory` on the host
/// instead: they belong on the FAT boot partition.
public struct TreeWriter {
    public var bootPrefix: ImagePath = ImagePath("boot")
    public var bootDirectory: String?
    /// Files written to ext4 and also copied to a host file (a kernel kept in /usr/lib/modules).
    public var extraCaptures: [ImagePath: String] = [:]

    public init(bootDirectory: String?, extraCaptures: [ImagePath: String] = [:]) {
        self.bootDirectory = bootDirectory
        self.extraCaptures = extraCaptures
    }

    /// The longest name ext4 holds, in bytes.
    public static let maximumNameLength = 255

    public struct Result: Sendable {
        public var bytesWritten: UInt64 = 0
        public var filesWritten = 0
    }

    /// Writes the tree. `digests` checks the layers' blob digests; pass one started
    /// earlier to overlap the hashing with other work (it is waited for at the end).
    ///
    /// - Throws: `DiskError.ext4` with the path being written when libext2fs fails (full file system, too many inodes, an attribute that does not fit), `DiskError.nameTooLong`, `ImageError` when a layer cannot be read or its digest does not match, `DiskError.io` when a /boot file cannot be saved.
    public func write(
        tree: FileTree, layers: [LayerSource], to ext4: Ext4Writer, progress: ProgressReporter?,
        digests: LayerDigests? = nil
    ) throws -> Result {
        var result = Result()
        var directoryInodes: [ImagePath: Ext4Writer.Inode] = [[]: Ext4Writer.rootInode]
        ext4.reserveNames(tree.stats.names + 1, bytes: tree.stats.nameBytes + 10)  // + lost+found
        try Self.naming([]) { try ext4.setMetadata(Ext4Writer.rootInode, tree.root.metadata) }
        for (path, node) in tree.directories() where !path.isEmpty {
            let (parentPath, name) = path.splitParent
            guard let parent = directoryInodes[parentPath] else { continue }
            if parentPath.isEmpty, name == ImagePath("lost+found") {
                directoryInodes[path] = 11
                continue
            }
            if isBoot(path), path != bootPrefix {
                if let dir = bootDirectory {
                    try FileManager.default.createDirectory(
                        atPath: dir + "/" + relativeBoot(path), withIntermediateDirectories: true)
                }
                continue
            }
            try Self.checkName(path)
            directoryInodes[path] = try Self.naming(path) {
                try ext4.mkdir(parent: parent, name: name, metadata: node.metadata)
            }
        }

        var linkInodes: [EntryRef: Ext4Writer.Inode] = [:]
        let total = tree.stats.dataBytes
        let digests = digests ?? LayerDigests(layers)
        for (index, layer) in layers.enumerated() {
            let stream = try layer.open()
            var ordinal = 0
            while let entry = try stream.next() {
                ordinal += 1
                let ref = EntryRef(layer: index, ordinal: ordinal)
                if entry.kind == .directory { continue }
                // Where the scan put the entry (its parents resolved through the image's symlinks).
                let path = tree.placement(of: ref) ?? entry.path
                let final = tree.isFinal(ref, at: path)
                if final != nil { try Self.checkName(path) }
                let (parentPath, name) = path.splitParent
                let needed = tree.linkSources.contains(ref)
                do {
                    switch entry.kind {
                    case .regular(let size):
                        guard final != nil || needed else { continue }
                        if let node = final, isBoot(path), let dir = bootDirectory {
                            if node.capturedFile != nil { continue }  // saved while scanning
                            try capture(stream, to: dir + "/" + relativeBoot(path))
                            continue
                        }
                        // A link source whose directory is gone gets an inode with no name of its own;
                        // the parent is then only an allocation hint.
                        guard let parent = directoryInodes[parentPath] ?? (final == nil ? Ext4Writer.rootInode : nil)
                        else { continue }
                        let tee = final != nil ? try extraCaptures[path].map(Self.createCapture) : nil
                        defer { try? tee?.close() }
                        let ino = try ext4.createFile(
                            parent: parent, name: name, metadata: entry.metadata, size: size,
                            dataRegions: entry.dataRegions, linked: final != nil
                        ) { sink in
                            try stream.readData { bytes, offset in
                                try sink(bytes, offset)
                                if let tee {
                                    try tee.seek(toOffset: UInt64(offset))
                                    tee.write(Data(bytes))
                                }
                            }
                        }
                        if needed { linkInodes[ref] = ino }
                        result.filesWritten += 1
                        progress?.update(bytes: ext4.bytesWritten, total: total)
                    case .hardlink:
                        guard let node = final, let parent = directoryInodes[parentPath], let src = node.linkSource,
                            let ino = linkInodes[src]
                        else { continue }
                        try ext4.hardlink(parent: parent, name: name, to: ino)
                    default:
                        guard final != nil || needed else { continue }
                        // As for files: a link source whose name is gone keeps an inode without one.
                        guard let parent = directoryInodes[parentPath] ?? (final == nil ? Ext4Writer.rootInode : nil)
                        else { continue }
                        let ino = try writeOther(
                            entry.kind, parent: parent, name: name, metadata: entry.metadata, linked: final != nil,
                            ext4: ext4)
                        if needed, let ino { linkInodes[ref] = ino }
                    }
                } catch let error as Ext4Error {
                    throw DiskError.ext4(path: path.display, error)
                }
            }
            try stream.finish()
        }
        try digests.wait()
        result.bytesWritten = ext4.bytesWritten
        return result
    }

    /// Writes a symlink, device, FIFO or socket and returns its inode (nil for other kinds).
    private func writeOther(
        _ kind: EntryKind, parent: Ext4Writer.Inode, name: ImagePath, metadata: EntryMetadata, linked: Bool,
        ext4: Ext4Writer
    ) throws -> Ext4Writer.Inode? {
        let special: SpecialFileKind
        switch kind {
        case .symlink(let target):
            return try ext4.symlink(parent: parent, name: name, target: target, metadata: metadata, linked: linked)
        case .characterDevice(let major, let minor): special = .characterDevice(major: major, minor: minor)
        case .blockDevice(let major, let minor): special = .blockDevice(major: major, minor: minor)
        case .fifo: special = .fifo
        case .socket: special = .socket
        case .regular, .directory, .hardlink: return nil
        }
        return try ext4.special(parent: parent, name: name, kind: special, metadata: metadata, linked: linked)
    }

    /// What the tree's extended attributes need of the file system.
    public struct XattrNeeds: Sendable, Equatable {
        /// `mkfs.ext4 -O` features: `ea_inode`, or none.
        public var features: [String] = []
        /// At most this many values get inodes of their own (each takes an inode of the file system).
        public var valueInodes = 0

        public init(features: [String] = [], valueInodes: Int = 0) {
            self.features = features
            self.valueInodes = valueInodes
        }
    }

    /// What the tree's extended attributes need: the `ea_inode` feature when an inode's attributes do
    /// not fit one attribute block (a 6 KB `user.` value) and `kernel` mounts such a file system (Linux
    /// 4.13 and later; nil: assumed to), and inodes for the values. Checked before anything is written:
    /// most images have no large attribute, and then no node is visited.
    ///
    /// - Throws: `DiskError.xattrTooLarge` naming the path, the attribute and the limit, when a value is
    ///   over the kernel's 64 KiB or needs `ea_inode` that `kernel` cannot mount.
    public static func xattrNeeds(for tree: FileTree, blockSize: Int, kernel: KernelVersion?) throws -> XattrNeeds {
        guard tree.stats.largestXattrSet > XattrSpace.blockCapacity(blockSize: blockSize) else { return XattrNeeds() }
        var needs = XattrNeeds()
        func check(_ path: ImagePath, _ node: TreeNode) throws {
            switch XattrSpace.fit(node.metadata.xattrs, blockSize: blockSize) {
            case .fits:
                return
            case .tooLarge(let name, let size, let limit):
                throw DiskError.xattrTooLarge(
                    path: path.display, name: name, size: size, limit: limit,
                    reason: "Linux reads and writes attribute values of at most \(limit) bytes; "
                        + "shrink or remove it in the image")
            case .needsEAInode(let name, let size, let limit):
                if let kernel, kernel < KernelVersion(XattrSpace.eaInodeKernel) {
                    throw DiskError.xattrTooLarge(
                        path: path.display, name: name, size: size, limit: limit,
                        reason: "one ext4 attribute block holds \(limit) bytes, and larger values need the ea_inode "
                            + "feature, which kernel \(kernel) cannot mount "
                            + "(\(XattrSpace.eaInodeKernel) or later can); "
                            + "shrink the attribute in the image or boot a newer kernel")
                }
                needs.features = ["ea_inode"]
                needs.valueInodes += node.metadata.xattrs.count
            }
        }
        try check([], tree.root)
        // Hard links too: a link whose source's own name is gone is the only place its attributes show.
        try tree.forEachNode(check)
        return needs
    }

    /// Runs `body`, adding `path` to a libext2fs error (the ext4 writer knows only inode numbers).
    static func naming<T>(_ path: ImagePath, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as Ext4Error {
            throw DiskError.ext4(path: path.display, error)
        }
    }

    /// Refuses a name ext4 cannot hold, naming its path (the writer itself knows only the name).
    static func checkName(_ path: ImagePath) throws {
        let (_, name) = path.splitParent
        guard name.count <= maximumNameLength else { throw DiskError.nameTooLong([path.display]) }
    }

    private func isBoot(_ path: ImagePath) -> Bool {
        bootDirectory != nil
            && (path == bootPrefix || path.starts(with: bootPrefix + [UInt8(ascii: "/")]))
    }

    private func relativeBoot(_ path: ImagePath) -> String {
        String(decoding: path.dropFirst(bootPrefix.count + 1), as: UTF8.self)
    }

    private static func createCapture(_ file: String) throws -> FileHandle {
        guard FileManager.default.createFile(atPath: file, contents: nil),
            let handle = FileHandle(forWritingAtPath: file)
        else {
            throw DiskError.io(file, message: "cannot create")
        }
        return handle
    }

    private func capture(_ stream: EntryStream, to file: String) throws {
        let handle = try Self.createCapture(file)
        defer { try? handle.close() }
        try stream.readData { bytes, offset in
            try handle.seek(toOffset: UInt64(offset))
            handle.write(Data(bytes))
        }
    }
}
