import D2LDiskModel
import D2LImage
import D2LSupport
import Foundation
import Synchronization

/// Makes an initrd for an outside kernel with the disk's own initramfs tools: initramfs-tools'
/// `mkinitramfs` (Debian, Ubuntu) or `dracut`, whichever the image has.
///
/// What the tools need of the disk's root file system (/etc, /usr and the merged-/usr links) is copied
/// out once with `debugfs rdump` (no mount, no loop device); the kernel's modules go into that copy
/// from its linux-image .deb (or are already there for the image's own kernel release); then the tool
/// runs chrooted in the copy inside user, mount and PID namespaces of its own (`unshare
/// --map-root-user`), so nothing on the host is mounted or changed and no root is needed where
/// unprivileged user namespaces are allowed.
///
/// An actor: one build at a time works in the copied root.
public actor ImageInitramfs {
    public enum Tool: String, Sendable, Codable {
        case mkinitramfs, dracut
    }

    public nonisolated let image: String
    public nonisolated let format: DiskFormat
    /// Scratch space: the copied root and, for a non-raw disk, a raw copy of it.
    public nonisolated let workDirectory: String
    private var extractedRoot: String?
    private var rootFailure: (any Error)?
    /// The builds' own programs: `stop()` ends these and no other child of d2l.
    private nonisolated let children = ChildProcesses()
    /// Set by `stop()`: a build in progress gives up at its next step.
    private nonisolated let stopping = Mutex(false)

    public init(image: String, format: DiskFormat, workDirectory: String) {
        self.image = image
        self.format = format
        self.workDirectory = workDirectory
    }

    deinit { Self.removeTree(workDirectory) }

    /// Ends a build in progress (its own tools are killed, its copy writing stops) and deletes the copied
    /// root: for a signal handler.
    public nonisolated func stop() {
        stopping.withLock { $0 = true }
        children.killAll()  // unshare ignores SIGTERM while it waits; SIGKILL ends its namespace
        Self.removeTree(workDirectory)
    }

    private nonisolated func checkStopping() throws {
        if stopping.withLock({ $0 }) { throw BisectError.stopped }
    }

    /// Checks once, before any kernel boots, what every initrd build needs: user namespaces, the disk's
    /// root file system and an initramfs tool in it. Throws what is missing (a problem of the setup,
    /// not of any kernel).
    public func preflight(note: @Sendable (String) -> Void) async throws {
        do {
            let probe = await ProcessRunner.capture(
                ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child", "true"],
                stop: .kill, children: children)
            guard probe.status == 0 else {
                throw BisectError.initrd(
                    "unshare cannot make a user namespace here (\(probe.stderr.trimmingCharacters(in: .whitespacesAndNewlines))); "
                        + "allow them (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces) "
                        + "or give initrds with --initrd")
            }
            let root = try await ensureRoot(note: note)
            _ = try Self.tool(in: root)
        }
    }

    /// Writes an initrd for kernel `release` to `output`. Its modules come from `package` (a linux-image
    /// .deb, with the linux-modules-RELEASE .debs beside it, as Ubuntu splits them) or, when nil, must be
    /// in the image already. `kernel` is the bzImage, whose folder may hold its config. `note` hears what
    /// is going on (this takes tens of seconds).
    ///
    /// - Throws: `BisectError.initrd` with what went wrong (no modules, no initramfs tool, the tool failed), `BisectError.stopped` when `stop()` ended it.
    public func build(
        release: String, package: String?, kernel: String? = nil, output: String, note: @Sendable (String) -> Void
    ) async throws {
        do {
            guard Self.isSafeRelease(release) else {
                throw BisectError.initrd("'\(release)' is not a kernel release d2l can use as a file name")
            }
            let root = try await ensureRoot(note: note)
            try checkStopping()
            let tool = try Self.tool(in: root)
            let modules = try Self.modulesDirectory(in: root)
            let installed = modules + "/" + release
            let aside = modules + "/.d2l-image-" + release
            // Everything added to the copy is taken out again, so the next kernel finds the image as it was.
            var added: [String] = []
            var movedAside = false
            defer {
                for path in added.reversed() { try? FileManager.default.removeItem(atPath: path) }
                if movedAside { _ = rename(aside, installed) }
            }
            if Self.lstatType(installed) == .typeSymbolicLink {
                throw BisectError.initrd("/lib/modules/\(release) in the image is a symlink")
            }
            if let package {
                // The package's own modules, even when the image has a build of the same release.
                if Self.lstatType(installed) != nil {
                    guard rename(installed, aside) == 0 else {
                        throw BisectError.initrd("cannot move the image's modules for \(release) aside")
                    }
                    movedAside = true
                }
                added.append(installed)
                let packages = [package] + Self.modulePackages(beside: package, release: release)
                note("initrd for \(release): modules from " + packages.map { URL(fileURLWithPath: $0).lastPathComponent }.joined(separator: ", "))
                added += try Self.installModules(
                    from: packages, release: release, modules: modules, root: root, check: checkStopping)
            } else if Self.lstatType(installed) != .typeDirectory {
                throw BisectError.initrd(
                    "the image has no modules for \(release) (\(installed.dropFirst(root.count))): give the kernel as "
                        + "its linux-image .deb, or an initrd with --initrd")
            }
            // mkinitramfs reads the kernel's config to check that it can unpack the compression chosen.
            let config = root + "/boot/config-" + release
            if Self.lstatType(config) == nil {
                added.append(config)
                if let found = Self.configBeside(kernel: kernel, release: release) {
                    note("initrd for \(release): kernel config from \(found)")
                    try FileManager.default.copyItem(atPath: found, toPath: config)
                } else {
                    note("initrd for \(release): no config-\(release) in the package, the image or beside the kernel; "
                        + "making a gzip initrd, which every kernel unpacks")
                    try "CONFIG_RD_GZIP=y\n".write(toFile: config, atomically: true, encoding: .utf8)
                }
            }
            let inside = "/d2l-initrd.img"
            added.append(root + inside)
            let command: String
            switch tool {
            case .mkinitramfs: command = #"depmod -a "$1" && mkinitramfs -o /d2l-initrd.img "$1""#
            case .dracut:
                command = #"depmod -a "$1" && dracut --force --no-hostonly --no-hostonly-cmdline --kver "$1" /d2l-initrd.img"#
            }
            note("initrd for \(release): running the image's \(tool.rawValue) (chrooted in a user namespace)")
            let start = ContinuousClock.now
            try checkStopping()
            try await Self.runChrooted(root: root, command: command, argument: release, children: children)
            try? FileManager.default.removeItem(atPath: output)
            try FileManager.default.createDirectory(
                atPath: URL(fileURLWithPath: output).deletingLastPathComponent().path, withIntermediateDirectories: true)
            try FileManager.default.moveItem(atPath: root + inside, toPath: output)
            let size = (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0
            note(String(format: "initrd for %@: %.1f MiB in %.1f s", release, Double(size) / 1_048_576, (ContinuousClock.now - start).seconds))
        }
    }

    /// Deletes the copied root (also done when this object goes away).
    public func removeWorkTree() {
        Self.removeTree(workDirectory)
        extractedRoot = nil
    }

    private static func removeTree(_ directory: String) {
        guard FileManager.default.fileExists(atPath: directory) else { return }
        // rdump keeps the image's modes: make every directory writable so that it can be removed.
        var stack = [directory]
        while let dir = stack.popLast() {
            chmod(dir, 0o700)
            for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
                let path = dir + "/" + name
                if lstatType(path) == .typeDirectory { stack.append(path) }
            }
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    // MARK: - Steps

    /// The top-level entries worth copying: what the tools, their hooks and their configuration live in.
    static let copiedTopLevel: Set<String> = ["etc", "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"]

    /// Copies the disk's root file system out once; a failure is remembered, not retried for each kernel.
    private func ensureRoot(note: @Sendable (String) -> Void) async throws -> String {
        if let extractedRoot { return extractedRoot }
        if let rootFailure { throw rootFailure }
        do {
            let root = try await extractRoot(note: note)
            extractedRoot = root
            return root
        } catch {
            rootFailure = error
            throw error
        }
    }

    private func extractRoot(note: @Sendable (String) -> Void) async throws -> String {
        removeWorkTree()
        try FileManager.default.createDirectory(atPath: workDirectory, withIntermediateDirectories: true)
        var raw = image
        if format != .raw {
            raw = workDirectory + "/disk.raw"
            note("initrd: converting \(image) to raw to read its root file system")
            try await ProcessRunner.run(
                ["qemu-img", "convert", "-f", format.rawValue, "-O", "raw", image, raw], children: children)
        }
        defer { if raw != image { try? FileManager.default.removeItem(atPath: raw) } }
        let table = try PartitionTable.read(path: raw)
        guard let offset = table?.partition(.root)?.byteOffset ?? (table == nil ? 0 : nil) else {
            throw BisectError.initrd("\(image) has no Linux partition to take the initramfs tools from")
        }
        let device = "\(raw)?offset=\(offset)"
        let root = workDirectory + "/root"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        note("initrd: copying /etc and /usr out of \(image) with debugfs rdump")
        let start = ContinuousClock.now
        let listing = try await ProcessRunner.run(["debugfs", "-R", "ls -p /", device], children: children)
        let entries = Self.listing(listing).filter { Self.copiedTopLevel.contains($0.name) }
        let script = workDirectory + "/rdump.cmd"
        try entries.filter { $0.mode & 0o170000 == 0o040000 }
            .map { "rdump \"/\($0.name)\" \"\(root)\"" }.joined(separator: "\n")
            .write(toFile: script, atomically: true, encoding: .utf8)
        let result = await ProcessRunner.capture(["debugfs", "-f", script, device], children: children)
        // debugfs exits 0 whatever rdump met: its complaints are the only sign. Not being root, it cannot
        // chown, which does not matter here.
        let problems = result.stderr.split(separator: "\n").filter {
            !$0.hasPrefix("debugfs ") && !$0.contains("while changing ownership") && !$0.contains("while setting")
                && !$0.trimmingCharacters(in: .whitespaces).isEmpty
        }
        guard result.status == 0, problems.isEmpty else {
            throw BisectError.initrd("debugfs rdump of \(image) failed: \(problems.prefix(5).joined(separator: "; "))")
        }
        // Top-level symlinks (merged /usr: bin -> usr/bin, lib -> usr/lib, ...) as relative links.
        for entry in entries where entry.mode & 0o170000 == 0o120000 {
            let stat = try await ProcessRunner.run(["debugfs", "-R", "stat \"/\(entry.name)\"", device], children: children)
            guard var link = Self.fastLinkTarget(statOutput: stat) else { continue }
            while link.hasPrefix("/") { link.removeFirst() }
            guard !link.split(separator: "/").contains("..") else { continue }
            try FileManager.default.createSymbolicLink(atPath: root + "/" + entry.name, withDestinationPath: link)
        }
        for directory in ["proc", "sys", "dev", "run", "tmp", "boot", "var/tmp"] {
            try FileManager.default.createDirectory(atPath: root + "/" + directory, withIntermediateDirectories: true)
        }
        chmod(root + "/tmp", 0o1777)
        chmod(root + "/var/tmp", 0o1777)
        // Of /boot only the kernels' configs, which mkinitramfs reads: on the boot partition of a d2l disk,
        // in the root's /boot otherwise.
        if let fat = table?.partition(.boot)?.byteOffset {
            _ = await ProcessRunner.capture(
                ["mcopy", "-n", "-i", "\(raw)@@\(fat)", "::/config-*", root + "/boot/"], children: children)
        }
        let boot = (try? await ProcessRunner.run(["debugfs", "-R", "ls -p /boot", device], children: children)) ?? ""
        for entry in Self.listing(boot) where entry.name.hasPrefix("config-") && entry.mode & 0o170000 == 0o100000 {
            _ = await ProcessRunner.capture(
                ["debugfs", "-R", "dump \"/boot/\(entry.name)\" \"\(root)/boot/\(entry.name)\"", device],
                children: children)
        }
        // The image's configuration is for the machine it runs on; here the "machine" is the build host:
        // no resume device from the host's swap, and every module a disk may need rather than the host's.
        if FileManager.default.fileExists(atPath: root + "/etc/initramfs-tools") {
            try FileManager.default.createDirectory(
                atPath: root + "/etc/initramfs-tools/conf.d", withIntermediateDirectories: true)
            try "# d2l bisect: not the build host's\nRESUME=none\nMODULES=most\n".write(
                toFile: root + "/etc/initramfs-tools/conf.d/zz-d2l-bisect", atomically: true, encoding: .utf8)
        }
        guard FileManager.default.fileExists(atPath: root + "/bin/sh") else {
            throw BisectError.initrd("the copy of \(image)'s root has no /bin/sh: not a root file system d2l can chroot into")
        }
        note(String(format: "initrd: copied in %.1f s", (ContinuousClock.now - start).seconds))
        return root
    }

    /// The entries of `ls -p` output: /inode/mode/uid/gid/name/size/ per line.
    static func listing(_ output: String) -> [(name: String, mode: Int)] {
        output.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: "/", omittingEmptySubsequences: false)
            guard fields.count >= 6, let mode = Int(fields[2], radix: 8) else { return nil }
            let name = String(fields[5])
            guard !name.isEmpty, name != ".", name != "..", !name.contains("\"") else { return nil }
            return (name, mode)
        }
    }

    /// A release string is used in paths and passed to the tools: no slashes, spaces or leading dots.
    public static func isSafeRelease(_ release: String) -> Bool {
        !release.isEmpty && !release.hasPrefix(".") && release.count < 128
            && release.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "._+-~".contains($0)) }
    }

    /// `Fast link dest: "usr/bin"` in debugfs's stat output.
    static func fastLinkTarget(statOutput: String) -> String? {
        for line in statOutput.split(separator: "\n") {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard trimmed.hasPrefix("Fast link dest:") else { continue }
            var value = trimmed.dropFirst("Fast link dest:".count).trimmingCharacters(in: .whitespaces)
            if value.hasPrefix("\""), value.hasSuffix("\""), value.count >= 2 { value = String(value.dropFirst().dropLast()) }
            return value
        }
        return nil
    }

    /// The kernel's config: config-RELEASE or .config beside the bzImage, or the .config of the kernel tree
    /// a `arch/x86/boot/bzImage` was built in.
    static func configBeside(kernel: String?, release: String) -> String? {
        guard let kernel else { return nil }
        let folder = URL(fileURLWithPath: kernel).deletingLastPathComponent()
        let candidates = [
            folder.appendingPathComponent("config-\(release)"), folder.appendingPathComponent(".config"),
            folder.appendingPathComponent("../../../.config").standardizedFileURL,
        ]
        return candidates.map(\.path).first { FileManager.default.isReadableFile(atPath: $0) }
    }

    /// The file type without following a last symlink; nil when nothing is there.
    static func lstatType(_ path: String) -> FileAttributeType? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.type] as? FileAttributeType
    }

    /// Which initramfs tool the copied root has.
    static func tool(in root: String) throws -> Tool {
        for (path, tool) in [("usr/sbin/mkinitramfs", Tool.mkinitramfs), ("usr/bin/dracut", .dracut), ("usr/sbin/dracut", .dracut)]
        where FileManager.default.fileExists(atPath: root + "/" + path) {
            return tool
        }
        for (path, tool) in [("sbin/mkinitramfs", Tool.mkinitramfs), ("sbin/dracut", .dracut)]
        where lstatType(root + "/sbin") == .typeDirectory && FileManager.default.fileExists(atPath: root + "/" + path) {
            return tool
        }
        throw BisectError.initrd(
            "the image has neither mkinitramfs (initramfs-tools) nor dracut: install one in its recipe, "
                + "or give an initrd with --initrd")
    }

    /// Where kernel modules live in the copied root, with no symlink on the way: /lib/modules when /lib
    /// is a real directory, /usr/lib/modules when /lib leads there (merged /usr).
    static func modulesDirectory(in root: String) throws -> String {
        let relative = lstatType(root + "/lib") == .typeDirectory ? "lib/modules" : "usr/lib/modules"
        var path = root
        for component in relative.split(separator: "/") {
            path += "/" + component
            if lstatType(path) == .typeSymbolicLink {
                throw BisectError.initrd("/\(relative) in the image goes through a symlink (\(path.dropFirst(root.count)))")
            }
        }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Ubuntu ships the modules apart: linux-modules-RELEASE_*.deb and linux-modules-extra-RELEASE_*.deb
    /// beside the linux-image package.
    static func modulePackages(beside package: String, release: String) -> [String] {
        let folder = URL(fileURLWithPath: package).deletingLastPathComponent()
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        return names.filter {
            $0.hasSuffix(".deb")
                && ($0.hasPrefix("linux-modules-\(release)_") || $0.hasPrefix("linux-modules-extra-\(release)_"))
        }.sorted().map { folder.appendingPathComponent($0).path }
    }

    /// Writes the packages' lib/modules/RELEASE trees into `modules`; boot/config-RELEASE and
    /// System.map-RELEASE into the root's /boot. Returns the files written outside the modules tree.
    static func installModules(
        from packages: [String], release: String, modules: String, root: String, check: () throws -> Void = {}
    ) throws -> [String] {
        var count = 0
        var outside: [String] = []
        for package in packages {
            let member = try DebianPackage.dataMember(path: package)
            let source = LayerSource(
                location: .range(package, offset: member.offset, length: member.size), hasWhiteouts: false,
                size: member.size, description: "\(package) \(member.name)")
            let stream = try source.open()
            defer { try? stream.finish() }
            while let entry = try stream.next() {
                try check()
                let path = String(decoding: entry.path, as: UTF8.self)
                let destination: String
                if let inside = relativeModulePath(path, release: release) {
                    destination = modules + "/" + release + (inside.isEmpty ? "" : "/" + inside)
                } else if path == "boot/config-\(release)" || path == "boot/System.map-\(release)" {
                    destination = root + "/" + path
                    guard lstatType(destination) == nil else { continue }
                    outside.append(destination)
                } else {
                    continue
                }
                switch entry.kind {
                case .directory:
                    try FileManager.default.createDirectory(atPath: destination, withIntermediateDirectories: true)
                case .regular:
                    try FileManager.default.createDirectory(
                        atPath: URL(fileURLWithPath: destination).deletingLastPathComponent().path,
                        withIntermediateDirectories: true)
                    guard FileManager.default.createFile(atPath: destination, contents: nil) else {
                        throw BisectError.initrd("cannot write \(destination)")
                    }
                    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: destination))
                    try stream.readData { block, _ in handle.write(Data(block)) }
                    try handle.close()
                    count += 1
                default:
                    continue  // build/source symlinks point into a kernel tree that is not here
                }
            }
        }
        guard count > 0 else {
            throw BisectError.initrd(
                "\(packages[0]) has no modules for \(release) (lib/modules/\(release)/); for Ubuntu, put its "
                    + "linux-modules-\(release) .deb beside it")
        }
        return outside
    }

    /// The part of a package path below lib/modules/RELEASE (or usr/lib/...), nil outside it.
    static func relativeModulePath(_ path: String, release: String) -> String? {
        for prefix in ["lib/modules/\(release)", "usr/lib/modules/\(release)"] {
            if path == prefix { return "" }
            if path.hasPrefix(prefix + "/") {
                let rest = String(path.dropFirst(prefix.count + 1))
                return rest.split(separator: "/").contains("..") ? nil : rest
            }
        }
        return nil
    }

    /// Runs `command` (with `argument` as $1) by /bin/sh chrooted in `root`, in new user, mount and PID
    /// namespaces, with a fresh /proc, only null/zero/random/urandom from the host's /dev, and a clean
    /// environment: the host's mount table is never touched. Killing the `unshare` kills all of it.
    static func runChrooted(root: String, command: String, argument: String, children: ChildProcesses) async throws {
        guard ProcessRunner.which("unshare") != nil else {
            throw BisectError.initrd("unshare (util-linux) is not installed")
        }
        let inner = #"""
            for d in null zero random urandom; do : > "$1/dev/$d" && mount --bind "/dev/$d" "$1/dev/$d" || exit 1; done
            exec chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C TMPDIR=/tmp /bin/sh -c "$2" sh "$3"
            """#
        let arguments = [
            "unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child",
            "--mount-proc=\(root)/proc", "/bin/sh", "-c", inner, "d2l-initrd", root, command, argument,
        ]
        let result = await ProcessRunner.capture(arguments, stop: .kill, children: children)
        guard result.status == 0 else {
            if result.status == 128 + SIGKILL { throw BisectError.stopped }
            let output = (result.stderr + result.stdout).trimmingCharacters(in: .whitespacesAndNewlines)
            throw BisectError.initrd("the image's initramfs tool failed (status \(result.status)):\n\(output.suffix(800))")
        }
    }
}

/// Problems of a bisection that are not a verdict on a kernel.
public enum BisectError: Error, CustomStringConvertible, Sendable, CategorizedError {
    case initrd(String)
    /// The bisection is being stopped (a signal): not a verdict on anything.
    case stopped
    /// Options that do not make a bisection: the user's to fix.
    case badOption(String)
    /// A kernel list that cannot be bisected (no kernels, --good or --bad not among them).
    case kernels(String)
    /// The state file belongs to another bisection or cannot be used.
    case state(String)
    /// A file given as a linux-image .deb that is not one.
    case notAPackage(path: String, reason: String)

    public var description: String {
        switch self {
        case .initrd(let reason): return "cannot make an initrd: \(reason)"
        case .stopped: return "stopped"
        case .badOption(let text), .kernels(let text), .state(let text): return text
        case .notAPackage(let path, let reason): return "\(path): \(reason): pass a linux-image .deb or a bzImage"
        }
    }

    public var category: ErrorCategory {
        switch self {
        case .badOption, .kernels, .notAPackage: return .usage
        case .initrd, .stopped, .state: return .couldNotTest
        }
    }
}
