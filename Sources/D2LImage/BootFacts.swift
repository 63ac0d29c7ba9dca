import D2LDiskModel

/// What the builder learns about an image's ability to boot.
public struct BootFacts: Sendable {

    public struct Kernel: Sendable, Equatable {
        public var version: KernelVersion
        public var kernelPath: ImagePath
        public var initrdPath: ImagePath?
        public var kernelSize: UInt64
        public var initrdSize: UInt64
    }

    public var osRelease = OSRelease()
    public var kernels: [Kernel] = []
    /// The chosen kernel: the newest version.
    public var kernel: Kernel? { kernels.max { $0.version < $1.version } }
    public var initPath: ImagePath?
    public var initResolved: ImagePath?
    public var initSystem: InitSystem = .unknown
    /// ELF machine of the init (62 = x86-64), when it could be read.
    public var initMachine: UInt16?
    /// The architecture the image's config states (normalized), when it states one.
    public var architecture: String?
    /// The architecture the disk is built for: the config's, else the init's ELF machine; nil when
    /// neither is known or d2l does not boot it (then `problems` says so).
    public var bootArchitecture: Architecture? {
        architecture.flatMap(Architecture.init(rawValue:)) ?? initMachine.flatMap(Architecture.init(elfMachine:))
    }
    public var hasFsckExt4 = false
    public var problems: [String] = []

    public var distro: String { osRelease.name }

    /// Small files the builder reads while scanning.
    public static let capturePaths: Set<ImagePath> = Set(
        [
            "etc/os-release", "usr/lib/os-release", "etc/inittab", "etc/shadow", "etc/passwd", "etc/hosts",
            "etc/resolv.conf", "etc/hostname", "etc/fstab", "etc/securetty",
            // What d2l edits or copies to make the disk usable after login: users and groups, ifupdown's
            // interfaces, a new home's skeleton, root's own authorized keys.
            "etc/group", "etc/gshadow", "etc/network/interfaces", "etc/skel/.bashrc", "etc/skel/.profile",
            "etc/skel/.bash_logout", "root/.ssh/authorized_keys",
        ].map { ImagePath($0) })
    /// Base names of files captured wherever they are: the kernels' lists of built-in modules.
    public static let captureNames: Set<ImagePath> = [ImagePath("modules.builtin")]
    /// Base names of inits whose ELF header is read.
    public static let headNames: Set<ImagePath> = Set(
        ["init", "systemd", "busybox", "openrc-init"].map { ImagePath($0) })

    /// Examines a flattened tree. `initOverride` is the `--init` path, if any.
    public static func examine(_ tree: FileTree, architecture: String?, initOverride: String? = nil) -> BootFacts {
        var facts = BootFacts()
        facts.architecture = architecture.map { Platform(os: "linux", architecture: $0).architecture }
        for path in OSRelease.paths {
            if let (_, node) = tree.resolve(ImagePath(path)), let content = node.content {
                facts.osRelease = OSRelease(parsing: content)
                break
            }
        }
        facts.kernels = findKernels(tree)
        let initName = initOverride.map { String($0.drop { $0 == "/" }) } ?? "sbin/init"
        facts.initPath = ImagePath(initName)
        if let (resolved, node) = tree.resolve(ImagePath(initName)), node.kind != .directory {
            facts.initResolved = resolved
            let target = tree.lookup(resolved) ?? node
            let real = target.kind == .hardlink ? nil : target.head
            if let head = real ?? node.head, head.count >= 20, head.starts(with: [0x7f, 0x45, 0x4c, 0x46]) {
                facts.initMachine = UInt16(head[18]) | UInt16(head[19]) << 8
            }
            let inittab = tree.resolve(ImagePath("etc/inittab")).flatMap { $0.1.content }
            facts.initSystem = InitSystem.classify(
                initChain: [initName, resolved.display], inittab: inittab.map { String(decoding: $0, as: UTF8.self) },
                hasOpenRC: tree.resolve(ImagePath("sbin/openrc")) != nil)
        }
        facts.hasFsckExt4 = tree.resolve(ImagePath("sbin/fsck.ext4")) != nil
        facts.problems = facts.bootProblems(initOverride: initOverride)
        return facts
    }

    /// The `modules.builtin` of kernel `version` (`/lib/modules/V/` or `/usr/lib/modules/V/`), when the
    /// scan captured it (`captureNames`).
    public static func builtinModulesText(_ tree: FileTree, version: String) -> String? {
        for directory in ["lib/modules", "usr/lib/modules"] {
            if let (_, node) = tree.resolve(ImagePath("\(directory)/\(version)/modules.builtin")), let content = node.content {
                return String(decoding: content, as: UTF8.self)
            }
        }
        return nil
    }

    private func bootProblems(initOverride: String?) -> [String] {
        var problems: [String] = []
        let supported = Architecture.allCases.map { "linux/\($0)" }.joined(separator: " or ")
        let initArchitecture = initMachine.flatMap(Architecture.init(elfMachine:))
        if let arch = architecture, Architecture(rawValue: arch) == nil {
            problems.append("the image is for \(arch); d2l builds amd64 and arm64 disks: build the image for \(supported)")
        } else if let machine = initMachine, initArchitecture == nil {
            problems.append("the init is a program for neither amd64 nor arm64 (ELF machine \(machine)): build the image for \(supported)")
        } else if let arch = architecture, let initArchitecture, arch != initArchitecture.rawValue {
            problems.append(
                "the image's config says \(arch) but its init is an \(initArchitecture) program: the image is "
                    + "mislabelled; build it again for linux/\(initArchitecture)")
        }
        if let k = kernel {
            if k.initrdPath == nil {
                problems.append(
                    "no initrd for kernel \(k.version) (looked for /boot/initrd.img-\(k.version)): install an "
                        + "initramfs generator in the image (Debian: initramfs-tools) so the kernel package makes one")
            }
        } else {
            problems.append(
                "image has no kernel in /boot or /usr/lib/modules/*/vmlinuz: install one in the image "
                    + "(Debian: \((bootArchitecture ?? .amd64).debianKernelPackage), Alpine: linux-virt)")
        }
        if initResolved == nil {
            let shown = initOverride ?? "/sbin/init"
            problems.append(
                "image has no \(shown): install an init (Debian: systemd-sysv, or sysvinit-core) or name one with --init")
        }
        return problems
    }

    static func findKernels(_ tree: FileTree) -> [Kernel] {
        var kernels: [Kernel] = []
        let boot = tree.resolve(ImagePath("boot"))?.1
        var bootFiles: [String: TreeNode] = [:]
        for (name, node) in boot?.children ?? [:] where node.isRegularFile {
            bootFiles[String(decoding: name, as: UTF8.self)] = node
        }
        func initrd(for version: String) -> (String, TreeNode)? {
            for candidate in [
                "initrd.img-\(version)", "initramfs-\(version).img", "initrd-\(version)", "initramfs-\(version)",
            ] {
                if let n = bootFiles[candidate] { return (candidate, n) }
            }
            return nil
        }
        for (name, node) in bootFiles {
            var version: String?
            if name.hasPrefix("vmlinuz-") { version = String(name.dropFirst("vmlinuz-".count)) }
            if name.hasPrefix("bzImage-") { version = String(name.dropFirst("bzImage-".count)) }
            guard let version, !version.hasSuffix(".old") else { continue }
            let rd = initrd(for: version)
            kernels.append(
                Kernel(
                    version: KernelVersion(version), kernelPath: ImagePath("boot/" + name),
                    initrdPath: rd.map { ImagePath("boot/" + $0.0) }, kernelSize: node.size,
                    initrdSize: rd?.1.size ?? 0))
        }
        if kernels.isEmpty {
            for modules in ["usr/lib/modules", "lib/modules"] {
                guard let dir = tree.resolve(ImagePath(modules))?.1 else { continue }
                for (name, node) in dir.children where node.kind == .directory {
                    guard let k = node.children[ImagePath("vmlinuz")] else { continue }
                    let version = String(decoding: name, as: UTF8.self)
                    let base = modules + "/" + version
                    var rdPath: ImagePath?
                    var rdSize: UInt64 = 0
                    for candidate in ["initrd", "initramfs.img"] {
                        if let n = node.children[ImagePath(candidate)] {
                            rdPath = ImagePath(base + "/" + candidate)
                            rdSize = n.size
                            break
                        }
                    }
                    if rdPath == nil, let (n, node) = initrd(for: version) {
                        rdPath = ImagePath("boot/" + n)
                        rdSize = node.size
                    }
                    kernels.append(
                        Kernel(
                            version: KernelVersion(version), kernelPath: ImagePath(base + "/vmlinuz"), initrdPath: rdPath,
                            kernelSize: k.size, initrdSize: rdSize))
                }
                if !kernels.isEmpty { break }
            }
        }
        return kernels
    }
}
