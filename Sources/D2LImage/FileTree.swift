/// Which entry of which layer: (layer index, 1-based ordinal within the layer stream).
public struct EntryRef: Hashable, Sendable {
    public var layer: Int32
    public var ordinal: Int32
    public init(layer: Int, ordinal: Int) {
        self.layer = Int32(layer)
        self.ordinal = Int32(ordinal)
    }
}

/// One path of the flattened tree and the layer entry that provides it.
///
/// An image has a node per file (a million, for some), so a node stays small: stored fields
/// widest first, and the fields few nodes use (hard-link source, captured data) in a side object.
public final class TreeNode {
    public enum Kind: Sendable, Equatable { case directory, regular, symlink, hardlink, special }
    public var metadata: EntryMetadata
    public var size: UInt64 = 0
    public var children: [ImagePath: TreeNode] = [:]
    private var rare: Rare?
    public var entryKind: EntryKind?
    /// The entry that provides this node; nil for a directory no layer declared.
    public var source: EntryRef?
    private var storedLayer: Int32
    public var kind: Kind

    private final class Rare {
        var linkSource: EntryRef?
        var content: [UInt8]?
        var head: [UInt8]?
        var capturedFile: String?
        var dataRegions: [Range<UInt64>]?
    }

    init(kind: Kind, source: EntryRef?, layer: Int, metadata: EntryMetadata) {
        self.kind = kind
        self.source = source
        self.storedLayer = Int32(layer)
        self.metadata = metadata
    }

    /// The layer that last created or replaced this node (whiteouts act on lower ones only).
    public var layer: Int {
        get { Int(storedLayer) }
        set { storedLayer = Int32(newValue) }
    }

    private var rareFields: Rare {
        if let rare { return rare }
        let made = Rare()
        rare = made
        return made
    }

    /// For hard links: the entry whose inode this name shares (a regular file, symlink, device or FIFO).
    public var linkSource: EntryRef? {
        get { rare?.linkSource }
        set { if newValue != nil || rare != nil { rareFields.linkSource = newValue } }
    }
    /// The data of a small file the builder needs to read (os-release, inittab, ...).
    public var content: [UInt8]? {
        get { rare?.content }
        set { if newValue != nil || rare != nil { rareFields.content = newValue } }
    }
    /// The first bytes of a file (to check an init's ELF architecture).
    public var head: [UInt8]? {
        get { rare?.head }
        set { if newValue != nil || rare != nil { rareFields.head = newValue } }
    }
    /// A host file holding this file's data, saved while scanning (the /boot files).
    public var capturedFile: String? {
        get { rare?.capturedFile }
        set { if newValue != nil || rare != nil { rareFields.capturedFile = newValue } }
    }

    /// For a sparse file: the byte ranges that hold data (the rest are holes); nil for a dense file.
    public var dataRegions: [Range<UInt64>]? {
        get { rare?.dataRegions }
        set { if newValue != nil || rare != nil { rareFields.dataRegions = newValue } }
    }

    /// Bytes of data the file's blocks hold: its size, or for a sparse file its data regions' bytes.
    public var dataBytes: UInt64 {
        dataRegions.map { $0.reduce(0) { $0 + UInt64($1.count) } } ?? size
    }

    /// Blocks of `blockSize` bytes the file's data needs: holes in a sparse file take none.
    public func dataBlocks(blockSize: UInt64) -> UInt64 {
        LayerEntry.blocks(size: size, regions: dataRegions, blockSize: blockSize)
    }

    /// The target of a symlink, or of a hard link to a symlink (another name for the same inode).
    public var symlinkTarget: [UInt8]? {
        if case .symlink(let t) = entryKind { return t }
        return nil
    }

    /// A regular file, or a hard link to one (not to a symlink, device or FIFO).
    public var isRegularFile: Bool {
        kind == .regular || (kind == .hardlink && entryKind == nil)
    }
}

/// The result of flattening: the final tree, and which entries must be written.
public final class FileTree {
    public let root: TreeNode
    /// Entries that hard links point to (regular files, symlinks, devices, FIFOs).
    public private(set) var linkSources: Set<EntryRef> = []
    public private(set) var stats = Stats()
    /// Problems met while flattening (entries skipped), for the user.
    public var warnings: [String] = []

    public struct Stats: Sendable {
        public var regularFiles = 0
        public var directories = 0
        public var symlinks = 0
        public var hardlinks = 0
        public var specials = 0
        /// Bytes of regular-file data that will be written (holes in sparse files not counted).
        public var dataBytes: UInt64 = 0
        /// 4 KiB blocks the data needs (set by `finalise`): what sizes the disk, so a sparse file
        /// counts only the blocks its data touches, not its apparent size.
        public var dataBlocks4K: UInt64 = 0
        public var longSymlinks = 0
        /// Names in the tree (every node but the root) and their bytes: what the ext4 writer keeps
        /// in memory until it writes the directories.
        public var names = 0
        public var nameBytes = 0
        /// The most bytes of extended attributes (names and values, plus 24 per attribute) on one
        /// inode: when this fits a file system's attribute block, every inode's attributes do.
        public var largestXattrSet = 0
        /// Bytes of every inode's extended attributes (names and values): room to keep for attribute
        /// blocks and for values in inodes of their own, beyond what fits in the inodes.
        public var xattrBytes: UInt64 = 0
        public var inodes: Int { regularFiles + directories + symlinks + specials }
    }

    init() {
        root = TreeNode(kind: .directory, source: nil, layer: -1, metadata: EntryMetadata(permissions: 0o755))
    }

    /// The node at `path`, without following symlinks.
    public func lookup(_ path: ImagePath) -> TreeNode? {
        var node = root
        for part in path.split(separator: UInt8(ascii: "/")) {
            guard node.kind == .directory, let child = node.children[Array(part)] else { return nil }
            node = child
        }
        return node
    }

    /// The most symlinks one path may go through (Linux's MAXSYMLINKS).
    public static let maximumSymlinkHops = 40

    /// Walks to the directory at `path` as a container engine applies a layer (Docker's and
    /// containerd's `RootPath`, the kernel's lookup in a chroot): every symlink on the way is followed
    /// inside the image, a relative target from the directory that holds the link, an absolute one
    /// from the image root, and `..` stops at the root, so a path never leaves the image.
    ///
    /// A name that is missing, or names something that is not a directory, gets the directory
    /// `make` returns (nil: the walk gives nil); a missing symlink target is made too (`var/run ->
    /// /run` with no /run), but a symlink to a file is replaced itself, leaving the file alone.
    ///
    /// - Returns: the directory and its path with every symlink resolved.
    /// - Throws: `ImageError.symlinkLoop` past `maximumSymlinkHops` symlinks (the kernel's ELOOP).
    func walkToDirectory(_ path: ImagePath, making make: (() -> TreeNode)? = nil) throws(ImageError)
        -> (node: TreeNode, path: ImagePath)?
    {
        typealias Trail = [(name: ImagePath, node: TreeNode)]
        /// The symlink a layer took for a directory, where it is, and the walk up to it.
        struct Link {
            var directory: TreeNode
            var name: ImagePath
            var trail: Trail
        }
        // Names still to walk, the last one to walk first; a symlink target's last name carries the link.
        var pending: [(part: ImagePath, link: Link?)] = path.split(separator: UInt8(ascii: "/")).reversed().map {
            (Array($0), nil)
        }
        var trail: Trail = []
        var hops = 0
        // Whether the path walked differs from `path` (most entries' do not: no new path is made for them).
        var redirected = false
        while let (part, link) = pending.popLast() {
            if part == [UInt8(ascii: ".")] {
                redirected = true
                continue
            }
            if part == [UInt8(ascii: "."), UInt8(ascii: ".")] {
                if !trail.isEmpty { trail.removeLast() }
                redirected = true
                continue
            }
            let node = trail.last?.node ?? root
            if let child = node.children[part] {
                if child.kind == .directory {
                    trail.append((part, child))
                    continue
                }
                if let target = child.symlinkTarget {
                    hops += 1
                    guard hops <= Self.maximumSymlinkHops else {
                        throw .symlinkLoop(path: path.display, layer: "")
                    }
                    // A chain of links answers for the first one, the name the layer used.
                    let outer = link ?? Link(directory: node, name: part, trail: trail)
                    if target.first == UInt8(ascii: "/") { trail.removeAll() }
                    pending += target.split(separator: UInt8(ascii: "/")).reversed().enumerated().map {
                        (Array($0.element), $0.offset == 0 ? outer : nil)
                    }
                    redirected = true
                    continue
                }
                if let link, let make {
                    // A symlink to a file, device or FIFO where the layer has a directory: the symlink is
                    // replaced (as a file in a directory's place is), not the file it points to.
                    let made = make()
                    link.directory.children[link.name] = made
                    trail = link.trail + [(link.name, made)]
                    continue
                }
            }
            guard let make else { return nil }
            let made = make()
            node.children[part] = made
            trail.append((part, made))
        }
        let node = trail.last?.node ?? root
        guard redirected else { return (node, path) }
        return (node, Array(trail.map(\.name).joined(separator: [UInt8(ascii: "/")])))
    }

    /// The node a layer entry at `path` names: its parent directories resolved through the image's
    /// symlinks as `walkToDirectory` does, its last name not followed (a hard link's target).
    ///
    /// - Throws: `ImageError.symlinkLoop` when the parents go through a symlink loop.
    public func lookupEntry(_ path: ImagePath) throws(ImageError) -> (node: TreeNode, path: ImagePath)? {
        let (parentPath, name) = path.splitParent
        guard !name.isEmpty else { return (root, []) }
        guard let (parent, resolved) = try walkToDirectory(parentPath), let node = parent.children[name] else {
            return nil
        }
        return (node, resolved.isEmpty ? name : resolved + [UInt8(ascii: "/")] + name)
    }

    /// Where an entry was put when its parent path went through a symlink (`bin/tool` on a merged-/usr
    /// image is `usr/bin/tool`); nil when it is where its own path says.
    public func placement(of ref: EntryRef) -> ImagePath? { placements[ref] }

    /// Entries whose parent path went through a symlink, and their real path (few, in any image).
    var placements: [EntryRef: ImagePath] = [:]

    /// Resolves `path` inside the image, following symlinks as the image's kernel would
    /// (never on the host). Returns the final path and node, or nil.
    public func resolve(_ path: ImagePath, followLast: Bool = true) -> (ImagePath, TreeNode)? {
        var pending = path.split(separator: UInt8(ascii: "/")).map(Array.init)
        var current: [ImagePath] = []
        var node = root
        var hops = 0
        while !pending.isEmpty {
            let part = pending.removeFirst()
            if part == Array(".".utf8) { continue }
            if part == Array("..".utf8) {
                if !current.isEmpty { current.removeLast() }
                node = lookup(Array(current.joined(separator: [UInt8(ascii: "/")]))) ?? root
                continue
            }
            guard node.kind == .directory, let child = node.children[part] else { return nil }
            if followLast || !pending.isEmpty, let target = child.symlinkTarget {
                hops += 1
                guard hops < 40 else { return nil }
                let targetParts = target.split(separator: UInt8(ascii: "/")).map(Array.init)
                if target.first == UInt8(ascii: "/") {
                    current = []
                    node = root
                }
                pending = targetParts + pending
                continue
            }
            current.append(part)
            node = child
        }
        return (Array(current.joined(separator: [UInt8(ascii: "/")])), node)
    }

    /// Whether `ref`, read at `path`, is what the final tree holds there.
    public func isFinal(_ ref: EntryRef, at path: ImagePath) -> TreeNode? {
        guard let node = lookup(path), node.source == ref else { return nil }
        return node
    }

    /// Every directory, parents before children, with its path.
    public func directories() -> [(ImagePath, TreeNode)] {
        var out: [(ImagePath, TreeNode)] = []
        var stack: [(ImagePath, TreeNode)] = [([], root)]
        while let (path, node) = stack.popLast() {
            out.append((path, node))
            // Sorted (in reverse, for the stack) so that inode numbers do not depend on hashing.
            let dirs = node.children.filter { $0.value.kind == .directory }.sorted { $0.key.lexicographicallyPrecedes($1.key) }
            for (name, child) in dirs.reversed() {
                stack.append((path.isEmpty ? name : path + [UInt8(ascii: "/")] + name, child))
            }
        }
        return out
    }

    /// Every node but the root, with its path, in no particular order.
    public func forEachNode(_ body: (ImagePath, TreeNode) throws -> Void) rethrows {
        var stack: [(ImagePath, TreeNode)] = [([], root)]
        while let (path, node) = stack.popLast() {
            for (name, child) in node.children {
                let childPath = path.isEmpty ? name : path + [UInt8(ascii: "/")] + name
                try body(childPath, child)
                if child.kind == .directory, !child.children.isEmpty { stack.append((childPath, child)) }
            }
        }
    }

    /// Paths whose last name is longer than `limit` bytes (ext4 holds 255), in no particular order.
    public func paths(withNamesLongerThan limit: Int) -> [ImagePath] {
        var out: [ImagePath] = []
        var stack: [(ImagePath, TreeNode)] = [([], root)]
        while let (path, node) = stack.popLast() {
            for (name, child) in node.children {
                let childPath = path.isEmpty ? name : path + [UInt8(ascii: "/")] + name
                if name.count > limit { out.append(childPath) }
                if child.kind == .directory, !child.children.isEmpty { stack.append((childPath, child)) }
            }
        }
        return out
    }

    /// Computes link sources and sizes once the tree is complete.
    func finalise() {
        var s = Stats()
        var sources: Set<EntryRef> = []
        // Only entries some hard link named can be link sources: remembering every regular file
        // here cost 48 MB for a million files, while the whole tree was held.
        var finalSources: Set<EntryRef> = []
        var stack = [root]
        while let node = stack.popLast() {
            if let src = node.source, linkSourceSizes[src] != nil { finalSources.insert(src) }
            if !node.metadata.xattrs.isEmpty {
                let bytes = node.metadata.xattrs.reduce(0) { $0 + $1.name.utf8.count + $1.value.count + 24 }
                s.largestXattrSet = max(s.largestXattrSet, bytes)
                s.xattrBytes += UInt64(bytes)
            }
            switch node.kind {
            case .directory:
                s.directories += 1
                for (name, child) in node.children {
                    s.names += 1
                    s.nameBytes += name.count
                    stack.append(child)
                }
            case .regular:
                s.regularFiles += 1
                s.dataBytes += node.dataBytes
                s.dataBlocks4K += node.dataBlocks(blockSize: 4096)
            case .symlink:
                s.symlinks += 1
                if (node.symlinkTarget?.count ?? 0) >= 60 { s.longSymlinks += 1 }
            case .hardlink:
                s.hardlinks += 1
                if let src = node.linkSource { sources.insert(src) }
            case .special:
                s.specials += 1
            }
        }
        // Link sources that are no longer final at their own path are written as extra inodes
        // (counted as regular files: a symlink's or device's inode needs no more room).
        for src in sources where !finalSources.contains(src) {
            s.regularFiles += 1
            let size = linkSourceSizes[src] ?? 0
            s.dataBytes += size
            s.dataBlocks4K += (size + 4095) / 4096
        }
        linkSources = sources
        stats = s
    }

    /// Data bytes of every entry a hard link named (filled while scanning; 0 for a symlink, device or FIFO).
    var linkSourceSizes: [EntryRef: UInt64] = [:]
}
