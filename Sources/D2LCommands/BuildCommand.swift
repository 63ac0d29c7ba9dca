import ArgumentParser
import D2LDisk
import D2LDiskModel
import D2LImage
import D2LSupport
import Foundation

/// `d2l build`: container image in, bootable disk out.
struct BuildCommand: PolicedCommand {
    static let exitPolicy = ExitPolicy.builder

    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build a bootable disk image from a container image, without root.",
        discussion: """
            INPUT is recognised by its content:
              - a docker-archive (docker save, podman save --format docker-archive)
              - an OCI image layout directory or oci-archive tar
              - a root file system tar (docker export, podman export), plain or compressed
              - a directory holding a root file system
              - docker:NAME or podman:NAME, saved from that engine

            The disk has a GPT (or MBR) partition table, a FAT partition that is both /boot and \
            the EFI system partition (the image's kernel and initrd; syslinux for BIOS; \
            systemd-boot, or shim and signed GRUB with --secure-boot, at \\EFI\\BOOT\\BOOTX64.EFI \
            for UEFI), and an ext4 root written straight from the layers (no mount, no loop \
            device). Every loader boots the same kernel with the same command line: \
            `root=UUID=<uuid> ro console=tty0 console=ttyS0,115200` plus --append.

            The image must contain a kernel and initrd (Debian: linux-image-amd64) and an init \
            (Debian: systemd-sysv). Set SOURCE_DATE_EPOCH for a byte-identical rebuild.

            Examples:
              podman save --format docker-archive -o debian.tar localhost/my/debian
              d2l build debian.tar -o linux.img --root-password-empty
              d2l build podman:localhost/my/debian -o linux.qcow2 --size 4G
            """)

    @Argument(help: "The container image (see above).")
    var input: String

    @Option(name: .shortAndLong, help: "The disk image to write.")
    var output: String = "linux.img"

    @Option(help: "Disk format (default: from the output's extension; raw when it has none; an extension d2l does not know is refused).")
    var format: DiskFormat?

    @Option(help: "Firmware the disk boots under: hybrid (BIOS and UEFI from one disk), bios or uefi (default: hybrid).")
    var boot: BootMode = .hybrid

    @Option(help: "Partition table: gpt (the ESP type, LegacyBIOSBootable for BIOS) or mbr (default: gpt).")
    var partitionTable: PartitionTable.Scheme = .gpt

    @Flag(help: "UEFI Secure Boot with the image's signed chain: shim as BOOTX64.EFI, the signed GRUB beside it, a signed kernel.")
    var secureBoot = false

    @Option(help: "Disk size, e.g. 2G or 1500M (default: the content plus headroom).")
    var size: String?

    @Option(help: "Free space on the root file system, as a percentage of the content (e.g. 25%) or a size (e.g. 512M).")
    var headroom: String?

    @Option(help: "The host name written to /etc/hostname.")
    var hostname: String = "d2l"

    @Option(help: "Set root's password (stored as a SHA-512 crypt hash).")
    var rootPassword: String?

    @Flag(help: "Give root an empty password (for test images only).")
    var rootPasswordEmpty = false

    @Option(help: "The network at boot: dhcp (the first Ethernet NIC by DHCP, with the image's own tools) or none (default: dhcp).")
    var network: NetworkMode = .dhcp

    @Option(
        name: .customLong("ssh-authorized-key"),
        help: ArgumentHelp(
            "A public key file (id_ed25519.pub, authorized_keys) to log in with over SSH: for the --user, else for root. Repeatable.",
            valueName: "file"))
    var sshAuthorizedKeys: [String] = []

    @Option(
        help: ArgumentHelp(
            "Create this user (with a home, and in the sudo group where the image has sudo); NAME:PASSWORD also sets its password (stored as a SHA-512 crypt hash).",
            valueName: "name[:password]"))
    var user: String?

    @Flag(help: "Do not turn the image config's Entrypoint and Cmd into a service that starts at boot.")
    var noContainerService = false

    @Option(help: "Extra kernel command line arguments.")
    var append: String = ""

    @Option(name: .customLong("init"), help: "The init to check for, when not /sbin/init.")
    var initPath: String?

    @Option(
        help: ArgumentHelp(
            "The platform to build for: os/arch[/variant], linux/amd64 or linux/arm64.",
            discussion: "Taken from a multi-platform image (default: this host's, linux/\(Architecture.host)); "
                + "a single image must be of that platform (default: whatever it is)."),
        transform: Platform.argument)
    var platform: Platform?

    @Flag(help: "Replace the output if it exists.")
    var force = false

    @Flag(help: "Flush the disk to the device before renaming it into place, so that the replace survives a crash.")
    var sync = false

    @Flag(help: "Print a JSON summary on stdout.")
    var json = false

    @Flag(name: .shortAndLong, help: "Print only warnings and errors.")
    var quiet = false

    /// SOURCE_DATE_EPOCH (reproducible-builds.org), when set.
    static var sourceDateEpoch: Int64? {
        ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"].flatMap { $0.isEmpty ? nil : Int64($0) }
    }

    func validate() throws {
        if let epoch = ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"], !epoch.isEmpty, Int64(epoch) == nil {
            throw ValidationError("SOURCE_DATE_EPOCH=\(epoch) is not a number of seconds")
        }
        if format == nil, DiskFormat.forOutput(output) == nil {
            throw ValidationError(DiskFormat.unknownExtensionMessage(output))
        }
        if let size, SizeParser.bytes(size) == nil { throw ValidationError("--size \(size): give a size such as 2G or 1500M") }
        if let headroom, SizeParser.headroom(headroom) == nil {
            throw ValidationError("--headroom \(headroom): give a percentage (25%) or a size (512M)")
        }
        if secureBoot && boot == .bios {
            throw ValidationError("--secure-boot is UEFI's: give --boot hybrid or uefi")
        }
        if rootPassword != nil && rootPasswordEmpty {
            throw ValidationError("--root-password and --root-password-empty exclude each other")
        }
        if let user, UserAccount(parsing: user) == nil {
            throw ValidationError(
                "--user \(user): give NAME or NAME:PASSWORD, NAME in lower-case letters, digits, '_' and '-' (not root: use --root-password)")
        }
        _ = try authorizedKeys()
        if hostname.isEmpty || hostname.count > 64 || !hostname.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." }) {
            throw ValidationError("--hostname \(hostname): letters, digits, '-' and '.' only, at most 64")
        }
    }

    /// The key lines of every --ssh-authorized-key file.
    ///
    /// - Throws: `ValidationError` for a file that cannot be read or holds no public key.
    func authorizedKeys() throws -> [String] {
        var keys: [String] = []
        for file in sshAuthorizedKeys {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ValidationError("--ssh-authorized-key \(file): cannot read it")
            }
            do {
                keys += try AuthorizedKeys.parse(String(decoding: data, as: UTF8.self), file: file)
            } catch {
                throw ValidationError("--ssh-authorized-key \(error)")
            }
        }
        return keys
    }

    func run() async throws {
        Cleanup.shared.installSignalHandlers()
        Cleanup.shared.startReaper()
        let progress = ProgressReporter(mode: quiet ? .quiet : nil)
        var options = BuildOptions(output: output)
        options.format = format
        options.size = size.flatMap(SizeParser.bytes)
        if let headroom, let parsed = SizeParser.headroom(headroom) {
            switch parsed {
            case .fraction(let f): options.headroom = f; options.minimumHeadroom = 0
            case .bytes(let b): options.headroom = 0; options.minimumHeadroom = b
            }
        }
        options.hostname = hostname
        options.rootPassword = rootPasswordEmpty ? "" : rootPassword
        options.append = append
        options.initPath = initPath
        options.force = force
        options.sync = sync
        options.bootMode = boot
        options.partitionTable = partitionTable
        options.secureBoot = secureBoot
        options.network = network
        options.authorizedKeys = try authorizedKeys()
        options.user = user.flatMap(UserAccount.init(parsing:))
        options.containerService = !noContainerService
        options.sourceDateEpoch = Self.sourceDateEpoch
        let started = Date()
        progress.begin("reading \(input)")
        defer { progress.done() }
        let image = try await ImageReader.open(input, asking: platform)
        defer { image.removeOwnedFiles() }
        let summary = try await DiskBuilder(image: image, options: options, progress: progress).build()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(summary), as: UTF8.self))
        }
        progress.note(
            String(
                format: "wrote %@ (%@, %@ allocated) in %.1f s: %@, kernel %@",
                summary.output, ProgressReporter.format(summary.diskBytes),
                ProgressReporter.format(summary.allocatedBytes), Date().timeIntervalSince(started),
                summary.distro.isEmpty ? "unknown distro" : summary.distro, summary.kernelVersion))
    }
}

/// Parses sizes ("2G", "1500M", "1073741824") and headroom ("25%", "512M").
enum SizeParser {
    enum Headroom { case fraction(Double), bytes(UInt64) }

    static func bytes(_ text: String) -> UInt64? {
        let t = text.trimmingCharacters(in: .whitespaces).uppercased()
        let units: [(String, UInt64)] = [
            ("TIB", 1 << 40), ("GIB", 1 << 30), ("MIB", 1 << 20), ("KIB", 1 << 10),
            ("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10), ("B", 1),
        ]
        for (suffix, scale) in units where t.hasSuffix(suffix) {
            guard let v = Double(t.dropLast(suffix.count)), v > 0 else { return nil }
            return UInt64(v * Double(scale))
        }
        return UInt64(t).flatMap { $0 > 0 ? $0 : nil }
    }

    static func headroom(_ text: String) -> Headroom? {
        if text.hasSuffix("%") {
            guard let v = Double(text.dropLast()), v >= 0, v <= 1000 else { return nil }
            return .fraction(v / 100)
        }
        return bytes(text).map { .bytes($0) }
    }
}
