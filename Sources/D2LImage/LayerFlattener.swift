import D2LSupport
import Foundation

/// Flattens layers with OCI semantics into a `FileTree`, reading headers only
/// (and the data of the few small files the builder must look at).
///
/// Rules (the OCI image spec's "Applying Changesets", as Docker and containerd apply layers): a
/// later entry replaces an earlier one at the same path; `.wh.NAME` removes NAME from lower layers;
/// `.wh..wh..opq` empties its directory of lower-layer content; an entry's parent directories are
/// found through the image's own symlinks, inside the image (`bin/tool` on a merged-/usr image, where
/// `bin -> usr/bin`, is `usr/bin/tool`), while its last name is never followed (an explicit directory
/// entry replaces a symlink); a parent that is missing or not a directory becomes a directory; hard
/// links share the inode of the entry they name (a file, symlink, device or FIFO), even when a later
/// layer replaces that entry's path.
public struct LayerFlattener {
    /// Paths whose content is captured while scanning (small configuration files).
    public var capturePaths: Set<ImagePath>
    /// Base names whose first bytes are captured (to check an init's architecture).
    public var headNames: Set<ImagePath>
    /// Base names whose content is captured wherever they are (up to 1 MiB: a kernel's `modules.builtin`).
    public var captureNames: Set<ImagePath>

    /// Regular files under any of `capturePrefixes` are saved into `captureDirectory` while scanning, so
    /// that their data (kernel, initrd, EFI loaders) is at hand before the layers are read again.
    public var capturePrefixes: [ImagePath]
    public var captureDirectory: String?

    /// Bytes the output can hold (the free space where the disk is written), or nil for no bound.
    /// A regular file whose data alone needs more (in 4 KiB blocks; a sparse file's holes take none)
    /// is refused at its header, before its data is read: a layer that expands far beyond its size
    /// (a decompression bomb) then costs no more than reading the headers before that file.
    public var dataLimit: UInt64?

    public init(
        capturePaths: Set<ImagePath> = [], headNames: Set<ImagePath> = [], captureNames: Set<ImagePath> = [],
        capturePrefixes: [ImagePath] = [], captureDirectory: String? = nil
    ) {
        self.capturePaths = capturePaths
        self.headNames = headNames
        self.captureNames = captureNames
        self.capturePrefixes = capturePrefixes
        self.captureDirectory = captureDirectory
    }

    static let whiteoutPrefix = Array(".wh.".utf8)
    static let opaqueMarker = Array(".wh..wh..opq".utf8)

    /// Scans every layer, bottom first.
    ///
    /// - Throws: `ImageError` when a layer cannot be read, `ImageError.symlinkLoop` (naming the entry and
    ///   the layer) when an entry's directories go through a symlink loop, `ImageError.fileLargerThanOutput`
    ///   for a file over `dataLimit`.
    public func scan(
        _ layers: [LayerSource], progress: ProgressReporter? = nil
    ) throws -> FileTree {
        let tree = FileTree()
        var bytesSeen: UInt64 = 0
        for (index, layer) in layers.enumerated() {
            let stream = try layer.open(headersOnly: true)
            var ordinal = 0
            while let entry = try stream.next() {
                ordinal += 1
                if let dataLimit, case .regular(let size) = entry.kind {
                    let bytes = LayerEntry.blocks(size: size, regions: entry.dataRegions, blockSize: 4096) * 4096
                    if bytes > dataLimit {
                        throw ImageError.fileLargerThanOutput(
                            path: entry.path.display, layer: layer.description, bytes: bytes, limit: dataLimit)
                    }
                }
                do {
                    try apply(entry, ref: EntryRef(layer: index, ordinal: ordinal), whiteouts: layer.hasWhiteouts,
                        tree: tree, stream: stream)
                } catch ImageError.symlinkLoop(let path, _) {
                    throw ImageError.symlinkLoop(path: path, layer: layer.description)
                }
                if case .regular(let size) = entry.kind { bytesSeen += size }
                if ordinal % 512 == 0 { progress?.update(bytes: bytesSeen) }
            }
            for name in stream.skippedNames {
                tree.warnings.append("\(layer.description): skipped \(name): its path leaves the root")
            }
            try stream.finish()
        }
        tree.finalise()
        return tree
    }

    /// Lays one more layer (files the builder generates) on a scanned tree.
    ///
    /// - Throws: `ImageError` when the layer cannot be read, `ImageError.symlinkLoop` when an entry's
    ///   directories go through a symlink loop of the image.
    public func overlay(_ layer: LayerSource, index: Int, on tree: FileTree) throws {
        let stream = try layer.open()
        var ordinal = 0
        while let entry = try stream.next() {
            ordinal += 1
            do {
                try apply(
                    entry, ref: EntryRef(layer: index, ordinal: ordinal), whiteouts: true, tree: tree, stream: stream)
            } catch ImageError.symlinkLoop(let path, _) {
                throw ImageError.symlinkLoop(path: path, layer: layer.description)
            }
        }
        tree.finalise()
    }

    /// Applies one entry to the tree.
    ///
    /// - Throws: `ImageError.symlinkLoop` when the entry's directories go through a symlink loop,
    ///   `ImageError` when a captured file cannot be read from the stream or saved.
    public func apply(_ entry: LayerEntry, ref: EntryRef, whiteouts: Bool, tree: FileTree, stream: EntryStream?)
        throws
    {
        let layer = Int(ref.layer)
        if entry.path.isEmpty {
            if entry.kind == .directory {
                tree.root.metadata = entry.metadata
                tree.root.source = ref
            }
            return
        }
        let (entryParent, name) = entry.path.splitParent
        if whiteouts, name.starts(with: Self.whiteoutPrefix) {
            guard let (parent, _) = try tree.walkToDirectory(entryParent) else { return }
            if name == Self.opaqueMarker {
                makeOpaque(parent, layer: layer)
            } else if name.starts(with: Self.whiteoutPrefix + Self.whiteoutPrefix) {
                // Other aufs metadata (.wh..wh.plnk, ...): not part of the tree.
            } else {
                let target = Array(name.dropFirst(Self.whiteoutPrefix.count))
                if let victim = parent.children[target], victim.layer < layer {
                    parent.children[target] = nil
                }
            }
            return
        }
        let mtime = entry.metadata.mtime
        let made = try tree.walkToDirectory(entryParent) {
            // A directory no layer declared.
            let dir = TreeNode(
                kind: .directory, source: nil, layer: layer, metadata: EntryMetadata(permissions: 0o755, mtime: mtime))
            dir.entryKind = .directory
            return dir
        }
        guard let (parent, parentPath) = made else { return }
        var path = entry.path
        if parentPath != entryParent {
            path = parentPath.isEmpty ? name : parentPath + [UInt8(ascii: "/")] + name
            tree.placements[ref] = path
        }
        switch entry.kind {
        case .directory:
            if let existing = parent.children[name], existing.kind == .directory {
                existing.metadata = entry.metadata
                existing.source = ref
                existing.layer = layer
                existing.entryKind = entry.kind
            } else {
                let node = TreeNode(kind: .directory, source: ref, layer: layer, metadata: entry.metadata)
                node.entryKind = entry.kind
                parent.children[name] = node
            }
        case .hardlink(let target):
            guard let (targetNode, _) = try tree.lookupEntry(target), targetNode.kind != .directory,
                let src = targetNode.kind == .hardlink ? targetNode.linkSource : targetNode.source
            else {
                // A link to nothing is a damaged layer (Docker refuses it too), not a file to drop quietly.
                let found = try tree.lookupEntry(target)?.node
                let why = found == nil ? "no such file before it in the image"
                    : found?.kind == .directory ? "a directory" : "its target has no data of its own"
                throw ImageError.archive(
                    stream?.what ?? "a layer", message: "hard link \(entry.path.display) -> \(target.display): " + why)
            }
            // Another name for the target's inode, whatever its kind (tar(5): a hard link names an
            // earlier entry; a link to a symlink or device is that same symlink or device).
            let node = TreeNode(kind: .hardlink, source: ref, layer: layer, metadata: targetNode.metadata)
            node.linkSource = src
            node.size = targetNode.size
            if !targetNode.isRegularFile { node.entryKind = targetNode.entryKind }
            tree.linkSourceSizes[src] = targetNode.dataBytes
            parent.children[name] = node
        default:
            let kind: TreeNode.Kind
            switch entry.kind {
            case .regular: kind = .regular
            case .symlink: kind = .symlink
            default: kind = .special
            }
            let node = TreeNode(kind: kind, source: ref, layer: layer, metadata: entry.metadata)
            node.entryKind = entry.kind
            if case .regular(let size) = entry.kind {
                node.size = size
                node.dataRegions = entry.dataRegions
                if let stream {
                    if capturePaths.contains(path) || captureNames.contains(name), size <= 1 << 20 {
                        node.content = try stream.readAll(limit: 1 << 20)
                    } else if headNames.contains(name) {
                        node.head = Array(try stream.readAll(limit: 64).prefix(64))
                    } else if let directory = captureDirectory,
                        capturePrefixes.contains(where: { path.starts(with: $0 + [UInt8(ascii: "/")]) })
                    {
                        let file = directory + "/\(ref.layer)-\(ref.ordinal)"
                        try Self.save(stream, to: file)
                        node.capturedFile = file
                    }
                }
            }
            parent.children[name] = node
        }
    }

    private static func save(_ stream: EntryStream, to file: String) throws {
        guard FileManager.default.createFile(atPath: file, contents: nil),
            let handle = FileHandle(forWritingAtPath: file)
        else {
            throw ImageError.archive(file, message: "cannot create")
        }
        defer { try? handle.close() }
        try stream.readData { bytes, offset in
            try handle.seek(toOffset: UInt64(offset))
            handle.write(Data(bytes))
        }
    }

    private func makeOpaque(_ dir: TreeNode, layer: Int) {
        for (name, child) in dir.children {
            if child.layer < layer {
                dir.children[name] = nil
            } else if child.kind == .directory {
                makeOpaque(child, layer: layer)
            }
        }
    }
}
