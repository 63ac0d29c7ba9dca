import D2LDiskModel
import D2LImage

/// The files d2l lays on an image, and what the build says about them.
public struct UserlandPlan: Sendable {
    /// Files, directories, symlinks and whiteouts, in the order they are laid (each path once).
    public var files: [SyntheticFile] = []
    /// What was set up, a line each, for the build log ("network: DHCP through systemd-networkd ...").
    public var notes: [String] = []
    /// What the user should know or change ("no DHCP client in the image: install isc-dhcp-client").
    public var warnings: [String] = []
}

/// Reads the flattened image and collects what d2l adds on top: the pieces of UserlandSetup share it,
/// so that a file one of them edits (/etc/shadow, /etc/fstab) is what the next one reads.
struct ImageEditor {
    let tree: FileTree
    let mtime: Int64
    private(set) var plan = UserlandPlan()
    /// Index in `plan.files` of each path written, so a second write replaces the first.
    private var written: [ImagePath: Int] = [:]

    init(tree: FileTree, mtime: Int64) {
        self.tree = tree
        self.mtime = mtime
    }

    mutating func note(_ text: String) { plan.notes.append(text) }
    mutating func warn(_ text: String) { plan.warnings.append(text) }

    // MARK: reading

    /// The text of a small file as it will be: what d2l wrote, else what the image has (files
    /// listed in `BootFacts.capturePaths` only), following symlinks inside the image.
    func text(_ path: String) -> String? {
        if let index = written[realPath(path)] {
            if case .file(let bytes) = plan.files[index].content { return String(decoding: bytes, as: UTF8.self) }
            return nil
        }
        return tree.resolve(ImagePath(path)).flatMap { $0.1.content }.map { String(decoding: $0, as: UTF8.self) }
    }

    /// Whether `path` exists, following symlinks inside the image (a dangling link does not).
    func exists(_ path: String) -> Bool {
        if let index = written[realPath(path)] {
            if case .whiteout = plan.files[index].content { return false }
            return true
        }
        return tree.resolve(ImagePath(path)) != nil
    }

    /// The image's own node at `path`, not following a final symlink.
    func node(_ path: String) -> TreeNode? { tree.lookup(ImagePath(path)) }

    /// The first of `paths` that exists in the image, as an absolute path.
    func firstExisting(_ paths: [String]) -> String? { paths.first { exists($0) }.map { "/" + $0 } }

    /// `path` with the directories above it resolved through the image's symlinks (`lib/x` is
    /// `usr/lib/x` on a merged-/usr image): what d2l writes must land in a real directory, or the
    /// layer would replace the symlink with a directory.
    func realPath(_ path: String) -> ImagePath {
        let parts = path.split(separator: "/").map(String.init)
        guard parts.count > 1 else { return ImagePath(path) }
        for keep in stride(from: parts.count - 1, through: 1, by: -1) {
            let prefix = parts[..<keep].joined(separator: "/")
            if let (resolved, node) = tree.resolve(ImagePath(prefix)), node.kind == .directory {
                let rest = parts[keep...].joined(separator: "/")
                return resolved.isEmpty ? ImagePath(rest) : resolved + ImagePath("/" + rest)
            }
        }
        return ImagePath(path)
    }

    // MARK: writing

    private mutating func lay(_ file: SyntheticFile) {
        if let index = written[file.path] {
            plan.files[index] = file
        } else {
            written[file.path] = plan.files.count
            plan.files.append(file)
        }
    }

    /// Writes a regular file. `like` copies owner and mode from the image's file there, when it has one.
    mutating func write(
        _ path: String, _ text: String, mode: UInt16 = 0o644, uid: UInt32 = 0, gid: UInt32 = 0, keepOwnerAndMode: Bool = false
    ) {
        let real = realPath(path)
        var file = SyntheticFile(path: "", content: .file(Array(text.utf8)), permissions: mode, mtime: mtime)
        file.path = real
        file.metadata.uid = uid
        file.metadata.gid = gid
        if keepOwnerAndMode, let existing = tree.lookup(real), existing.kind == .regular {
            file.metadata.uid = existing.metadata.uid
            file.metadata.gid = existing.metadata.gid
            file.metadata.permissions = existing.metadata.permissions
        }
        lay(file)
    }

    /// Makes a directory (or sets the owner and mode of the image's own).
    mutating func directory(_ path: String, mode: UInt16 = 0o755, uid: UInt32 = 0, gid: UInt32 = 0) {
        var file = SyntheticFile(path: "", content: .directory, permissions: mode, mtime: mtime)
        file.path = realPath(path)
        file.metadata.uid = uid
        file.metadata.gid = gid
        lay(file)
    }

    /// Makes the directories above `path` that the image lacks, 0755 and root's.
    mutating func parents(of path: String) {
        let parts = path.split(separator: "/").map(String.init)
        for count in stride(from: 1, to: parts.count, by: 1) {
            let prefix = parts[..<count].joined(separator: "/")
            if !exists(prefix) { directory(prefix) }
        }
    }

    mutating func symlink(_ path: String, to target: String) {
        var file = SyntheticFile(path: "", content: .symlink(Array(target.utf8)), permissions: 0o777, mtime: mtime)
        file.path = realPath(path)
        lay(file)
    }

    /// Removes whatever the image has at `path`.
    mutating func remove(_ path: String) {
        var file = SyntheticFile(path: "", content: .whiteout, mtime: mtime)
        file.path = realPath(path)
        lay(file)
    }

    /// Adds a raw entry (the root directory's mode).
    mutating func add(_ file: SyntheticFile) { lay(file) }

    // MARK: services

    /// The image's unit file `name`, as an absolute path, from the directories systemd reads.
    func systemdUnit(_ name: String) -> String? {
        firstExisting(
            ["etc/systemd/system/", "usr/lib/systemd/system/", "lib/systemd/system/"].map { $0 + name })
    }

    /// A systemd program (`systemd-networkd`) in /usr/lib/systemd or /lib/systemd.
    func systemdProgram(_ name: String) -> String? {
        firstExisting(["usr/lib/systemd/" + name, "lib/systemd/" + name])
    }

    /// A program on the usual PATH (`dhclient`, `ssh-keygen`).
    func program(_ name: String) -> String? {
        firstExisting(["usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin"].map { $0 + "/" + name })
    }

    /// Enables a systemd unit as `systemctl enable` would for `WantedBy=target`: a symlink in
    /// /etc/systemd/system/TARGET.wants to the unit file.
    mutating func enableSystemdUnit(_ name: String, unitFile: String, wantedBy target: String) {
        parents(of: "etc/systemd/system/\(target).wants/\(name)")
        if !exists("etc/systemd/system/\(target).wants") { directory("etc/systemd/system/\(target).wants") }
        symlink("etc/systemd/system/\(target).wants/\(name)", to: unitFile)
    }

    /// Writes a systemd unit into /etc/systemd/system and enables it.
    mutating func installSystemdUnit(_ name: String, _ text: String, wantedBy targets: [String]) {
        parents(of: "etc/systemd/system/" + name)
        write("etc/systemd/system/" + name, text)
        for target in targets { enableSystemdUnit(name, unitFile: "/etc/systemd/system/" + name, wantedBy: target) }
    }

    /// Writes an OpenRC service into /etc/init.d and adds it to `runlevel`, as `rc-update add` would.
    mutating func installOpenRCService(_ name: String, _ script: String, runlevel: String) {
        parents(of: "etc/init.d/" + name)
        write("etc/init.d/" + name, script, mode: 0o755)
        enableOpenRCService(name, runlevel: runlevel)
    }

    mutating func enableOpenRCService(_ name: String, runlevel: String) {
        parents(of: "etc/runlevels/\(runlevel)/\(name)")
        if !exists("etc/runlevels/\(runlevel)") { directory("etc/runlevels/\(runlevel)") }
        symlink("etc/runlevels/\(runlevel)/\(name)", to: "/etc/init.d/" + name)
    }

    /// Whether an OpenRC service is in any runlevel already.
    func openRCServiceEnabled(_ name: String) -> Bool {
        guard let levels = node("etc/runlevels"), levels.kind == .directory else { return false }
        return levels.children.values.contains { $0.children[ImagePath(name)] != nil }
            || written.keys.contains { String(decoding: $0, as: UTF8.self).hasPrefix("etc/runlevels/") && $0.splitParent.name == ImagePath(name) }
    }
}
