import D2LImage
import D2LSupport
import D2LVerify
import Foundation

/// Makes an initrd for an outside kernel with the disk's own initramfs tools: initramfs-tools'
/// `mkinitramfs` (Debian, Ubuntu) or `dracut`, whichever the image has.
///
/// The disk's root file system is copied out once with `debugfs rdump` (no mount, no loop device);
/// the kernel's modules go into that copy from its linux-image .deb (or are already there for the
/// image's own kernel release); then the tool runs chrooted in the copy inside a user and mount
/// namespace of its own (`unshare --map-root-user`), so nothing on the host is mounted or changed and
/// no root is needed where unprivileged user namespaces are allowed.
public final class ImageInitramfs: @unchecked Sendable {
    public enum Tool: String, Sendable, Codable {
        case mkinitramfs, dracut
    }

    public let image: String
    public let format: DiskFormat
    /// Scratch space: the copied root and, for a non-raw disk, a raw copy of it.
    public let workDirectory: String
    private let lock = NSLock()
    private var extractedRoot: String?

    public init(image: String, format: DiskFormat, workDirectory: String) {
        self.image = image
        self.format = format
        self.workDirectory = workDirectory
    }

    deinit { removeWorkTree() }

    /// Writes an initrd for kernel `release` to `output`; its modules come from `package` (a linux-image
    /// .deb) or, when nil, must be in the image already. `note` hears what is going on (this takes tens
    /// of seconds). Returns a description of what made the initrd, for the log.
    @discardableResult
    public func build(
        release: String, package: String?, kernel: String? = nil, output: String, note: (String) -> Void
    ) throws -> String {
        try lock.withLock {
            let root = try ensureRoot(note: note)
            let tool = try Self.tool(in: root)
            let modules = try Self.modulesDirectory(in: root)
            let installed = modules + "/" + release
            var added = false
            defer {
                if added { try? FileManager.default.removeItem(atPath: installed) }
            }
            if let package {
                if !FileManager.default.fileExists(atPath: installed) {
                    note("initrd for \(release): taking its modules from \(package)")
                    added = true
                    try Self.installModules(from: package, release: release, modules: modules, root: root)
                }
            } else if !FileManager.default.fileExists(atPath: installed) {
                throw BisectError.initrd(
                    "the image has no modules for \(release) (\(installed.dropFirst(root.count))): give the kernel as "
                        + "its linux-image .deb, or an initrd with --initrd")
            }
            // mkinitramfs reads the kernel's config to check that it can unpack the compression chosen.
            let config = root + "/boot/config-" + release
            var addedConfig = false
            defer {
                if addedConfig { try? FileManager.default.removeItem(atPath: config) }
            }
            if !FileManager.default.fileExists(atPath: config) {
                addedConfig = true
                let folder = kernel.map { URL(fileURLWithPath: $0).deletingLastPathComponent().path }
                if let beside = folder.flatMap({ folder in
                    ["config-\(release)", ".config"].map { folder + "/" + $0 }.first { FileManager.default.fileExists(atPath: $0) }
                }) {
                    note("initrd for \(release): kernel config from \(beside)")
                    try FileManager.default.copyItem(atPath: beside, toPath: config)
                } else {
                    note("initrd for \(release): no config-\(release) in the package, the image or beside the kernel; "
                        + "assuming it unpacks gzip and zstd initrds")
                    try "CONFIG_RD_GZIP=y\nCONFIG_RD_ZSTD=y\n".write(toFile: config, atomically: true, encoding: .utf8)
                }
            }
            let inside = "/d2l-initrd-\(release).img"
            let command: String
            switch tool {
            case .mkinitramfs: command = "depmod -a \(release) && mkinitramfs -o \(inside) \(release)"
            case .dracut: command = "depmod -a \(release) && dracut --force --no-hostonly --kver \(release) \(inside)"
            }
            note("initrd for \(release): running the image's \(tool.rawValue) (chrooted in a user namespace)")
            let start = ContinuousClock.now
            try Self.runChrooted(root: root, command: command)
            try? FileManager.default.removeItem(atPath: output)
            try FileManager.default.createDirectory(
                atPath: URL(fileURLWithPath: output).deletingLastPathComponent().path, withIntermediateDirectories: true)
            try FileManager.default.moveItem(atPath: root + inside, toPath: output)
            let size = (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0
            note(String(format: "initrd for %@: %.1f MiB in %.1f s", release, Double(size) / 1_048_576, (ContinuousClock.now - start).seconds))
            return "built with the image's \(tool.rawValue)"
        }
    }

    /// Deletes the copied root (also done when this object goes away).
    public func removeWorkTree() {
        if FileManager.default.fileExists(atPath: workDirectory) {
            // rdump keeps the image's modes: make every directory writable so that it can be removed.
            _ = ProcessRunner.captureSync(["chmod", "-R", "u+rwX", workDirectory])
            try? FileManager.default.removeItem(atPath: workDirectory)
        }
        extractedRoot = nil
    }

    // MARK: - Steps

    /// Copies the disk's root file system out once: the image's tools and their configuration.
    private func ensureRoot(note: (String) -> Void) throws -> String {
        if let extractedRoot { return extractedRoot }
        removeWorkTree()
        try FileManager.default.createDirectory(atPath: workDirectory, withIntermediateDirectories: true)
        var raw = image
        if format != .raw {
            raw = workDirectory + "/disk.raw"
            note("initrd: converting \(image) to raw to read its root file system")
            try ProcessRunner.run(["qemu-img", "convert", "-f", format.rawValue, "-O", "raw", image, raw])
        }
        guard let offset = GuestInspector.linuxPartitionOffset(path: raw) else {
            throw BisectError.initrd("\(image) has no Linux partition to take the initramfs tools from")
        }
        let root = workDirectory + "/root"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        note("initrd: copying the root file system out of \(image) with debugfs rdump")
        let start = ContinuousClock.now
        // The top-level entries, then one rdump per directory worth having (not /boot, /proc, /sys, ...).
        let listing = try ProcessRunner.run(["debugfs", "-R", "ls -p /", "\(raw)?offset=\(offset)"])
        let skipped: Set<String> = [".", "..", "boot", "proc", "sys", "dev", "run", "tmp", "lost+found", "mnt", "media", "home", "srv"]
        var commands: [String] = []
        for line in listing.split(separator: "\n") {
            // /inode/mode/uid/gid/name/size/
            let fields = line.split(separator: "/", omittingEmptySubsequences: false)
            guard fields.count >= 6 else { continue }
            let name = String(fields[5])
            guard !name.isEmpty, !skipped.contains(name), !name.contains("\"") else { continue }
            let mode = Int(fields[2], radix: 8) ?? 0
            if mode & 0o170000 == 0o040000 { commands.append("rdump \"/\(name)\" \"\(root)\"") }
        }
        let script = workDirectory + "/rdump.cmd"
        try commands.joined(separator: "\n").write(toFile: script, atomically: true, encoding: .utf8)
        let result = ProcessRunner.captureSync(["debugfs", "-f", script, "\(raw)?offset=\(offset)"])
        guard result.status == 0 else {
            throw BisectError.initrd("debugfs rdump of \(image) failed: \(result.stderr.suffix(400))")
        }
        // Top-level symlinks (merged /usr: bin -> usr/bin, lib -> usr/lib, ...) as links, not copies.
        for line in listing.split(separator: "\n") {
            let fields = line.split(separator: "/", omittingEmptySubsequences: false)
            guard fields.count >= 6, (Int(fields[2], radix: 8) ?? 0) & 0o170000 == 0o120000 else { continue }
            let name = String(fields[5])
            let target = try ProcessRunner.run(["debugfs", "-R", "stat \"/\(name)\"", "\(raw)?offset=\(offset)"])
            guard let link = Self.fastLinkTarget(statOutput: target) else { continue }
            try? FileManager.default.removeItem(atPath: root + "/" + name)
            try FileManager.default.createSymbolicLink(atPath: root + "/" + name, withDestinationPath: link)
        }
        for directory in ["proc", "sys", "dev", "run", "tmp", "boot", "var/tmp"] {
            try FileManager.default.createDirectory(atPath: root + "/" + directory, withIntermediateDirectories: true)
        }
        // Of /boot only the kernels' configs, which mkinitramfs reads: on the boot partition of a d2l disk,
        // in the root's /boot otherwise.
        if let fat = Self.bootPartitionOffset(path: raw) {
            _ = ProcessRunner.captureSync(["mcopy", "-n", "-i", "\(raw)@@\(fat)", "::/config-*", root + "/boot/"])
        }
        let boot = (try? ProcessRunner.run(["debugfs", "-R", "ls -p /boot", "\(raw)?offset=\(offset)"])) ?? ""
        for line in boot.split(separator: "\n") {
            let fields = line.split(separator: "/", omittingEmptySubsequences: false)
            guard fields.count >= 6, fields[5].hasPrefix("config-"), !fields[5].contains("\"") else { continue }
            _ = ProcessRunner.captureSync(
                ["debugfs", "-R", "dump \"/boot/\(fields[5])\" \"\(root)/boot/\(fields[5])\"", "\(raw)?offset=\(offset)"])
        }
        chmod(root + "/tmp", 0o1777)
        if raw != image { try? FileManager.default.removeItem(atPath: raw) }
        note(String(format: "initrd: root file system copied in %.1f s", (ContinuousClock.now - start).seconds))
        extractedRoot = root
        return root
    }

    /// The byte offset of the first FAT partition of an MBR disk (d2l's /boot), or nil.
    static func bootPartitionOffset(path: String) -> UInt64? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.read(upToCount: 512), data.count == 512 else { return nil }
        let sector = [UInt8](data)
        guard sector[510] == 0x55, sector[511] == 0xAA else { return nil }
        for index in 0..<4 {
            let entry = 446 + index * 16
            guard [0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E, 0xEF].contains(sector[entry + 4]) else { continue }
            let lba = (0..<4).reduce(UInt64(0)) { $0 | UInt64(sector[entry + 8 + $1]) << (8 * UInt64($1)) }
            return lba * 512
        }
        return nil
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

    /// Which initramfs tool the copied root has.
    static func tool(in root: String) throws -> Tool {
        for (path, tool) in [("usr/sbin/mkinitramfs", Tool.mkinitramfs), ("sbin/mkinitramfs", .mkinitramfs),
            ("usr/bin/dracut", .dracut), ("usr/sbin/dracut", .dracut)]
        where FileManager.default.fileExists(atPath: root + "/" + path) {
            return tool
        }
        throw BisectError.initrd(
            "the image has neither mkinitramfs (initramfs-tools) nor dracut: install one in its recipe, "
                + "or give an initrd with --initrd")
    }

    /// Where kernel modules live in the copied root, with no symlink on the way (merged /usr resolved by hand).
    static func modulesDirectory(in root: String) throws -> String {
        var isLink = false
        if let type = try? FileManager.default.attributesOfItem(atPath: root + "/lib")[.type] as? FileAttributeType {
            isLink = type == .typeSymbolicLink
        }
        let relative = isLink || !FileManager.default.fileExists(atPath: root + "/lib/modules") ? "usr/lib/modules" : "lib/modules"
        var path = root
        for component in relative.split(separator: "/") {
            path += "/" + component
            if let type = try? FileManager.default.attributesOfItem(atPath: path)[.type] as? FileAttributeType,
                type == .typeSymbolicLink
            {
                throw BisectError.initrd("/\(relative) in the image goes through a symlink (\(path.dropFirst(root.count)))")
            }
        }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Writes the package's lib/modules/RELEASE tree (and boot/config-RELEASE) into the copied root.
    static func installModules(from package: String, release: String, modules: String, root: String) throws {
        let member = try DebianPackage.dataMember(path: package)
        let source = LayerSource(
            location: .range(package, offset: member.offset, length: member.size), hasWhiteouts: false,
            size: member.size, description: "\(package) \(member.name)")
        let stream = try source.open()
        defer { _ = try? stream.finish() }
        var count = 0
        while let entry = try stream.next() {
            let path = String(decoding: entry.path, as: UTF8.self)
            let destination: String
            if let inside = relativeModulePath(path, release: release) {
                destination = modules + "/" + release + (inside.isEmpty ? "" : "/" + inside)
            } else if path == "boot/config-\(release)" || path == "boot/System.map-\(release)" {
                destination = root + "/" + path
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
        guard count > 0 else {
            throw BisectError.initrd("\(package) has no modules for \(release) (lib/modules/\(release)/)")
        }
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

    /// Runs `command` with /bin/sh chrooted in `root`, in new user, mount and PID namespaces with the
    /// host's /dev bound in and a fresh /proc: the host's mount table is never touched.
    static func runChrooted(root: String, command: String) throws {
        guard ProcessRunner.which("unshare") != nil else {
            throw BisectError.initrd("unshare (util-linux) is not installed")
        }
        let inner = "mount --rbind /dev \"$1/dev\" && exec chroot \"$1\" /bin/sh -c \"$2\""
        let arguments = [
            "unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--mount-proc=\(root)/proc",
            "/bin/sh", "-c", inner, "d2l-initrd", root, command,
        ]
        let result = ProcessRunner.captureSync(
            arguments, environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "TMPDIR": "/tmp"])
        guard result.status == 0 else {
            let output = (result.stderr + result.stdout).trimmingCharacters(in: .whitespacesAndNewlines)
            var reason = String(output.suffix(800))
            if output.contains("unshare failed") || output.contains("Operation not permitted") {
                reason += "\n(user namespaces may be disabled: sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces)"
            }
            throw BisectError.initrd("the image's initramfs tool failed (status \(result.status)):\n\(reason)")
        }
    }
}

/// Problems of a bisection that are not a verdict on a kernel.
public enum BisectError: Error, CustomStringConvertible, Sendable {
    case initrd(String)

    public var description: String {
        switch self {
        case .initrd(let reason): return "cannot make an initrd: \(reason)"
        }
    }
}
