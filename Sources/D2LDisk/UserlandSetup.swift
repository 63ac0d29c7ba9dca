import D2LImage
import D2LSupport
import Foundation

/// The files d2l adds to the image so that it boots on a disk: fstab,
/// hostname, machine-id, a serial getty where the init needs one, a root
/// password, and real resolv.conf and hosts in place of container placeholders.
public struct UserlandSetup: Sendable {
    public var hostname: String
    public var rootUUID: String
    public var bootVolumeID: UInt32
    /// `nil` leaves the image's root password alone; "" makes it empty (test images).
    public var rootPassword: String?
    public var passwordSalt: String
    public var mtime: Int64

    public init(
        hostname: String, rootUUID: String, bootVolumeID: UInt32, rootPassword: String?, passwordSalt: String,
        mtime: Int64
    ) {
        self.hostname = hostname
        self.rootUUID = rootUUID
        self.bootVolumeID = bootVolumeID
        self.rootPassword = rootPassword
        self.passwordSalt = passwordSalt
        self.mtime = mtime
    }

    public var bootVolumeUUID: String {
        let hex = String(format: "%08X", bootVolumeID)
        return hex.prefix(4) + "-" + hex.suffix(4)
    }

    /// The files to lay on top of the image.
    ///
    /// - Throws: `DiskError.tool` when crypt(3) cannot make the password hash.
    public func files(for tree: FileTree, facts: BootFacts) throws -> [SyntheticFile] {
        var files: [SyntheticFile] = []
        func add(_ path: String, _ text: String, permissions: UInt16 = 0o644) {
            files.append(SyntheticFile(path: path, content: .file(Array(text.utf8)), permissions: permissions, mtime: mtime))
        }
        func existing(_ path: String) -> TreeNode? { tree.lookup(ImagePath(path)) }
        func content(_ path: String) -> String? {
            tree.resolve(ImagePath(path)).flatMap { $0.1.content }.map { String(decoding: $0, as: UTF8.self) }
        }

        // A root directory others cannot enter (debootstrap into `mktemp -d` leaves it 0700) locks every
        // service that drops root out of the whole system: open it up as any installed system has it.
        let rootMode = tree.root.metadata.permissions
        if rootMode & 0o055 != 0o055 {
            var root = SyntheticFile(path: "", content: .directory, permissions: rootMode | 0o755)
            root.metadata = tree.root.metadata
            root.metadata.permissions = rootMode | 0o755
            files.append(root)
        }
        if tree.lookup(ImagePath("etc")) == nil {
            files.append(SyntheticFile(path: "etc", content: .directory, permissions: 0o755, mtime: mtime))
        }
        let passno = facts.hasFsckExt4 ? 1 : 0
        add(
            "etc/fstab",
            """
            # Written by d2l build.
            UUID=\(rootUUID) / ext4 errors=remount-ro 0 \(passno)
            UUID=\(bootVolumeUUID) /boot vfat umask=0077,nofail 0 0

            """)
        add("etc/hostname", hostname + "\n")
        files.append(SyntheticFile(path: "etc/machine-id", content: .file([]), permissions: 0o444, mtime: mtime))
        for placeholder in [".dockerenv", ".containerenv"] where existing(placeholder) != nil {
            files.append(SyntheticFile(path: placeholder, content: .whiteout, mtime: mtime))
        }
        if isPlaceholder(existing("etc/hosts")) {
            add(
                "etc/hosts",
                """
                127.0.0.1\tlocalhost
                127.0.1.1\t\(hostname)
                ::1\tlocalhost ip6-localhost ip6-loopback
                ff02::1\tip6-allnodes
                ff02::2\tip6-allrouters

                """)
        }
        if isPlaceholder(existing("etc/resolv.conf")) {
            add(
                "etc/resolv.conf",
                "# Written by d2l build: the resolver of QEMU's user-mode network.\nnameserver 10.0.2.3\n")
        }
        if let password = rootPassword {
            let shadow = content("etc/shadow") ?? ""
            let field: String
            if password.isEmpty {
                field = ""
            } else {
                guard let hash = PasswordHash.sha512Crypt(password, salt: passwordSalt) else {
                    throw DiskError.tool("crypt(3) could not make a SHA-512 password hash")
                }
                field = hash
            }
            add("etc/shadow", Self.setRootPassword(in: shadow, field: field, days: mtime / 86400), permissions: 0o640)
            if let node = existing("etc/shadow") {
                files[files.count - 1].metadata.gid = node.metadata.gid
                files[files.count - 1].metadata.permissions = node.metadata.permissions
            }
        }
        switch facts.initSystem {
        case .sysvinit, .openrc:
            let inittab = content("etc/inittab") ?? ""
            if !Self.hasActiveSerialGetty(inittab) {
                add("etc/inittab", inittab + (inittab.hasSuffix("\n") || inittab.isEmpty ? "" : "\n")
                    + "# Added by d2l build: a login prompt on the serial console.\n"
                    + "T0:23:respawn:/sbin/getty -L ttyS0 115200 vt100\n")
            }
        case .busybox:
            let inittab = content("etc/inittab")
            if inittab == nil {
                add(
                    "etc/inittab",
                    """
                    # Written by d2l build.
                    ::sysinit:/etc/init.d/rcS
                    ttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100
                    ::ctrlaltdel:/sbin/reboot
                    ::shutdown:/bin/umount -a -r

                    """)
            } else if let inittab, !Self.hasActiveSerialGetty(inittab) {
                add("etc/inittab", inittab + "\nttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100\n")
            }
        case .systemd, .unknown:
            break  // systemd starts serial-getty@ttyS0 for the console= on the command line
        }
        return files
    }

    /// An empty regular file, or nothing: what a container leaves where the engine bind-mounts its own.
    private func isPlaceholder(_ node: TreeNode?) -> Bool {
        guard let node else { return true }
        return node.kind == .regular && node.size == 0
    }

    static func hasActiveSerialGetty(_ inittab: String) -> Bool {
        inittab.split(separator: "\n").contains { line in
            !line.drop { $0 == " " || $0 == "\t" }.hasPrefix("#") && line.contains("ttyS0") && line.contains("getty")
        }
    }

    static func setRootPassword(in shadow: String, field: String, days: Int64) -> String {
        var lines = shadow.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        var found = false
        for (i, line) in lines.enumerated() where line.hasPrefix("root:") {
            var parts = line.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            while parts.count < 9 { parts.append("") }
            parts[1] = field
            parts[2] = String(days)
            lines[i] = parts.joined(separator: ":")
            found = true
        }
        if !found { lines.insert("root:\(field):\(days):0:99999:7:::", at: 0) }
        return lines.joined(separator: "\n") + "\n"
    }
}
