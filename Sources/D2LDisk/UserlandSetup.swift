import D2LDiskModel
import D2LImage
import D2LSupport
import Foundation

/// The files d2l adds to the image so that it boots on a disk and is usable after login: fstab
/// (the image's own entries kept), hostname, per-machine identity, a serial getty where the init
/// needs one, passwords, users and SSH keys, the network by DHCP, a root that grows with the disk,
/// and the container's own command as a service.
public struct UserlandSetup: Sendable {
    public var hostname: String
    public var rootUUID: String
    public var bootVolumeID: UInt32
    /// `nil` leaves the image's root password alone; "" makes it empty (test images).
    public var rootPassword: String?
    public var passwordSalt: String
    public var mtime: Int64
    /// DHCP on the first Ethernet NIC, or nothing.
    public var network: NetworkMode = .dhcp
    /// Public key lines for the `user`'s authorized_keys, or root's when there is no `user`.
    public var authorizedKeys: [String] = []
    /// A user to create (or find) with a home, in the sudo group where the image has sudo.
    public var user: UserAccount?
    /// The image config's Entrypoint, Cmd, Env, WorkingDir and User, when it has a config.
    public var containerConfig: ContainerConfig?
    /// false: `--no-container-service`.
    public var containerService = true
    /// GPT or MBR: on GPT the root partition (of the Discoverable Partitions root type) grows at
    /// first boot when the disk was enlarged; systemd-repart does not handle MBR.
    public var partitionTable: PartitionTable.Scheme = .gpt
    /// The partitions' GUIDs (GPT), lower-case, which fstab may name as PARTUUID=.
    public var partitionUUIDs: [String] = []

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
    /// - Throws: `DiskError.tool` when crypt(3) cannot make a password hash.
    public func files(for tree: FileTree, facts: BootFacts) throws -> [SyntheticFile] {
        try plan(for: tree, facts: facts).files
    }

    /// The files to lay on top of the image, with what was set up and what the user should know.
    ///
    /// - Throws: `DiskError.tool` when crypt(3) cannot make a password hash.
    public func plan(for tree: FileTree, facts: BootFacts) throws -> UserlandPlan {
        var image = ImageEditor(tree: tree, mtime: mtime)

        // A root directory others cannot enter (debootstrap into `mktemp -d` leaves it 0700) locks every
        // service that drops root out of the whole system: open it up as any installed system has it.
        let rootMode = tree.root.metadata.permissions
        if rootMode & 0o055 != 0o055 {
            var root = SyntheticFile(path: "", content: .directory, permissions: rootMode | 0o755)
            root.metadata = tree.root.metadata
            root.metadata.permissions = rootMode | 0o755
            image.add(root)
        }
        if tree.lookup(ImagePath("etc")) == nil { image.directory("etc") }

        writeFstab(facts: facts, into: &image)
        image.write("etc/hostname", hostname + "\n")
        MachineIdentity.apply(initSystem: facts.initSystem, to: &image)
        for placeholder in [".dockerenv", ".containerenv"] where image.node(placeholder) != nil {
            image.remove(placeholder)
        }
        if isPlaceholder(image.node("etc/hosts")) {
            image.write(
                "etc/hosts",
                """
                127.0.0.1\tlocalhost
                127.0.1.1\t\(hostname)
                ::1\tlocalhost ip6-localhost ip6-loopback
                ff02::1\tip6-allnodes
                ff02::2\tip6-allrouters

                """)
        }
        NetworkSetup.apply(network, initSystem: facts.initSystem, to: &image)

        let accounts = UserAccounts(days: mtime / 86400, salt: passwordSalt)
        if let password = rootPassword {
            let field: String
            if password.isEmpty {
                field = ""
            } else {
                guard let hash = PasswordHash.sha512Crypt(password, salt: passwordSalt) else {
                    throw DiskError.tool("crypt(3) could not make a SHA-512 password hash")
                }
                field = hash
            }
            let shadow = image.text("etc/shadow")
            image.write(
                "etc/shadow", Self.setRootPassword(in: shadow ?? "", field: field, days: mtime / 86400),
                mode: 0o640, keepOwnerAndMode: shadow != nil)
        }
        if let user {
            let entry = try accounts.ensure(user, in: &image)
            accounts.authorize(authorizedKeys, for: entry, in: &image)
        } else if !authorizedKeys.isEmpty {
            let root = UserAccounts.passwdEntries(image.text("etc/passwd") ?? "").first { $0.uid == 0 }
                ?? UserAccounts.PasswdEntry(name: "root", uid: 0, gid: 0, home: "/root")
            accounts.authorize(authorizedKeys, for: root, in: &image)
        }

        addSerialGetty(facts: facts, into: &image)
        growRoot(facts: facts, into: &image)

        switch ContainerService.decide(containerConfig, initSystem: facts.initSystem, enabled: containerService, image: image) {
        case .service(let service): service.install(initSystem: facts.initSystem, into: &image)
        case .none(let why): image.note("container service: none (\(why))")
        case .problem(let why): image.warn("container service: \(why)")
        }
        return image.plan
    }

    /// fstab: the root by UUID (grown with the partition where systemd can), /boot on the FAT
    /// partition, and the image's other entries as they were.
    private func writeFstab(facts: BootFacts, into image: inout ImageEditor) {
        let passno = facts.hasFsckExt4 ? 1 : 0
        let grows = partitionTable == .gpt && facts.initSystem == .systemd
        let merge = FstabMerge(
            rootLine: "UUID=\(rootUUID) / ext4 errors=remount-ro\(grows ? ",x-systemd.growfs" : "") 0 \(passno)",
            bootLine: "UUID=\(bootVolumeUUID) /boot vfat umask=0077,nofail 0 0",
            devices: .init(
                uuids: [rootUUID.lowercased(), bootVolumeUUID.lowercased()], labels: ["root", "BOOT"],
                partUUIDs: Set(partitionUUIDs.map { $0.lowercased() }), partLabels: partitionTable == .gpt ? ["ESP", "root"] : []))
        let (text, warnings) = merge.merge(image.text("etc/fstab"), fileExists: { image.exists($0) })
        image.write("etc/fstab", text)
        for warning in warnings { image.warn(warning) }
    }

    /// A getty on the serial console where the init does not start one itself.
    private func addSerialGetty(facts: BootFacts, into image: inout ImageEditor) {
        let tty = (facts.bootArchitecture ?? .amd64).serialConsole
        switch facts.initSystem {
        case .sysvinit, .openrc:
            let inittab = image.text("etc/inittab") ?? ""
            if !Self.hasActiveSerialGetty(inittab, tty: tty) {
                image.write(
                    "etc/inittab",
                    inittab + (inittab.hasSuffix("\n") || inittab.isEmpty ? "" : "\n")
                        + "# Added by d2l build: a login prompt on the serial console.\n"
                        + "T0:23:respawn:/sbin/getty -L \(tty) 115200 vt100\n", keepOwnerAndMode: true)
            }
        case .busybox:
            let inittab = image.text("etc/inittab")
            if inittab == nil {
                image.write(
                    "etc/inittab",
                    """
                    # Written by d2l build.
                    ::sysinit:/etc/init.d/rcS
                    \(tty)::respawn:/sbin/getty -L 115200 \(tty) vt100
                    ::ctrlaltdel:/sbin/reboot
                    ::shutdown:/bin/umount -a -r

                    """)
            } else if let inittab, !Self.hasActiveSerialGetty(inittab, tty: tty) {
                image.write("etc/inittab", inittab + "\n\(tty)::respawn:/sbin/getty -L 115200 \(tty) vt100\n", keepOwnerAndMode: true)
            }
        case .systemd, .unknown:
            break  // systemd starts serial-getty@ttyS0 (ttyAMA0) for the console= on the command line
        }
    }

    /// On a GPT disk with systemd, the root partition and its file system grow to fill a disk that
    /// was enlarged after the build: systemd-repart grows the partition (it finds it by its
    /// Discoverable Partitions type), and `x-systemd.growfs` in fstab grows ext4 online.
    private func growRoot(facts: BootFacts, into image: inout ImageEditor) {
        guard partitionTable == .gpt else {
            image.note("root growth: none on an MBR disk (systemd-repart needs GPT): grow partition 2 and ext4 by hand")
            return
        }
        guard facts.initSystem == .systemd else {
            image.note("root growth: none under \(facts.initSystem.rawValue): grow partition 2 and ext4 by hand (growpart, resize2fs)")
            return
        }
        guard image.exists("usr/bin/systemd-repart") || image.exists("bin/systemd-repart"),
            image.systemdUnit("systemd-repart.service") != nil
        else {
            image.warn("root growth: the image has no systemd-repart, so the root partition cannot grow at boot: install it (Debian 13: systemd-repart; Debian 12: part of systemd)")
            return
        }
        image.parents(of: "etc/repart.d/50-d2l-root.conf")
        image.write(
            "etc/repart.d/50-d2l-root.conf",
            """
            # Written by d2l build: the root partition (of the Discoverable Partitions root type) takes
            # the free space after it when the disk was enlarged; fstab's x-systemd.growfs grows ext4.
            [Partition]
            Type=root

            """)
        // systemd-growfs grows a mounted ext4, which needs it writable: after the root is remounted rw.
        image.parents(of: "etc/systemd/system/systemd-growfs-root.service.d/d2l.conf")
        image.write(
            "etc/systemd/system/systemd-growfs-root.service.d/d2l.conf",
            """
            # Written by d2l build: grow the root file system once it is writable and its partition grown.
            [Unit]
            After=systemd-remount-fs.service systemd-repart.service

            """)
        image.note("root growth: systemd-repart and x-systemd.growfs grow the root at boot when the disk was enlarged")
    }

    /// An empty regular file, or nothing: what a container leaves where the engine bind-mounts its own.
    private func isPlaceholder(_ node: TreeNode?) -> Bool {
        guard let node else { return true }
        return node.kind == .regular && node.size == 0
    }

    static func hasActiveSerialGetty(_ inittab: String, tty: String = "ttyS0") -> Bool {
        inittab.split(separator: "\n").contains { line in
            !line.drop { $0 == " " || $0 == "\t" }.hasPrefix("#") && line.contains(tty) && line.contains("getty")
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
