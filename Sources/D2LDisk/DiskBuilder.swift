import D2LDiskModel
import D2LExt4
import D2LImage
import D2LSupport
import Foundation

/// Everything `d2l build` can be told.
public struct BuildOptions: Sendable {
    public var output: String
    public var format: DiskFormat?
    public var size: UInt64?
    /// Free space to add, as a fraction of the content (0.25) with at least `minimumHeadroom` bytes.
    public var headroom: Double = 0.25
    public var minimumHeadroom: UInt64 = 256 << 20
    public var hostname: String = "d2l"
    public var rootPassword: String?
    public var append: String = ""
    public var initPath: String?
    public var force = false
    /// fsync the disk before renaming it into place (and its directory after): a replace that
    /// survives a crash, at the cost of waiting for the device.
    public var sync = false
    /// Refuse before writing when the output's file system has less free space than the disk needs
    /// (false lets a test meet the full file system while writing).
    public var checkFreeSpace = true
    public var sourceDateEpoch: Int64?
    /// The firmware the disk boots under: hybrid (BIOS and UEFI from one disk, or UEFI alone for
    /// architectures without a BIOS, arm64), bios or uefi.
    public var bootMode: BootMode = .hybrid
    /// GPT (ESP type, LegacyBIOSBootable for BIOS) or MBR (the FAT partition active).
    public var partitionTable: PartitionTable.Scheme = .gpt
    /// UEFI through the image's signed chain: shim, signed GRUB, signed kernel.
    public var secureBoot = false
    /// DHCP on the first Ethernet NIC with the image's own tools, or no network.
    public var network: NetworkMode = .dhcp
    /// Public key lines for `user`'s authorized_keys, or root's when there is no user.
    public var authorizedKeys: [String] = []
    /// A user to create, with a home, in the sudo group where the image has sudo.
    public var user: UserAccount?
    /// false: the image config's Entrypoint and Cmd do not become a service.
    public var containerService = true

    public init(output: String) { self.output = output }
}

/// What a build did, for `--json` and the closing line.
public struct BuildSummary: Codable, Sendable {
    public struct Phase: Codable, Sendable {
        public var name: String
        public var seconds: Double
    }
    public var input: String
    public var inputFormat: String
    public var inputDigest: String?
    public var distro: String
    public var kernelVersion: String
    public var initSystem: String
    public var output: String
    public var format: String
    public var diskBytes: UInt64
    public var allocatedBytes: UInt64
    public var contentBytes: UInt64
    public var files: Int
    public var rootUUID: String
    public var bootMode: String
    public var partitionTable: String
    /// The EFI loader and where it came from (the image or the build host).
    public var efiLoader: String?
    public var phases: [Phase]
    /// What the build set up in the userland (network, identity, users, services), a line each.
    public var setup: [String] = []
    /// What the user should know or change about the image.
    public var warnings: [String] = []
}

/// Builds a bootable disk from a container image.
public final class DiskBuilder {
    let image: ContainerImage
    let options: BuildOptions
    let progress: ProgressReporter
    private var phases: [BuildSummary.Phase] = []
    private var phaseStart = Date()
    private var phaseName: String?

    public init(image: ContainerImage, options: BuildOptions, progress: ProgressReporter) {
        self.image = image
        self.options = options
        self.progress = progress
    }

    private func phase(_ name: String) {
        endPhase()
        phaseName = name
        phaseStart = Date()
        progress.begin(name)
    }

    private func endPhase() {
        if let phaseName { phases.append(.init(name: phaseName, seconds: Date().timeIntervalSince(phaseStart))) }
        phaseName = nil
    }

    /// Reads the image, checks it can boot, writes the disk; the output appears only when all went well.
    ///
    /// The disk is written without a name (see `StagedFile`) and linked into place at the end, so a
    /// failure, a full file system or SIGKILL leaves nothing beside the output.
    /// - Throws: `DiskError` (the image cannot boot, the output exists, a tool is missing or failed,
    ///   the disk is too small, the output's file system is full, an extended attribute ext4 cannot
    ///   hold, `.ext4` when libext2fs fails on a file), `ImageError` for an unreadable layer or a
    ///   symlink loop, `Ext4Error` when libext2fs fails.
    public func build() async throws -> BuildSummary {
        let output = URL(fileURLWithPath: options.output).standardizedFileURL.path
        let outputDir = (output as NSString).deletingLastPathComponent
        do {
            return try await writeDisk()
        } catch {
            throw Self.explainFullFileSystem(error, directory: outputDir, needed: neededBytes, input: image.path)
        }
    }

    /// What the output's file system must hold, once the content is known.
    private var neededBytes: UInt64?

    private func writeDisk() async throws -> BuildSummary {
        guard let format = options.format ?? DiskFormat.forOutput(options.output) else {
            throw DiskError.badOption(DiskFormat.unknownExtensionMessage(options.output))
        }
        let output = URL(fileURLWithPath: options.output).standardizedFileURL.path
        let outputDir = (output as NSString).deletingLastPathComponent
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: outputDir, isDirectory: &isDir), isDir.boolValue else {
            throw DiskError.io(outputDir, message: "the output's directory does not exist")
        }
        if FileManager.default.fileExists(atPath: output), !options.force { throw DiskError.outputExists(output) }
        // syslinux is checked for once the architecture is known (arm64 disks have none).
        let tools = ["mkfs.ext4", "mkfs.vfat", "mmd", "mcopy"] + (options.bootMode.bios ? ["syslinux"] : [])
            + (format == .raw ? [] : ["qemu-img"])
        for tool in tools where ProcessRunner.which(tool) == nil && (tool != "syslinux" || Architecture.host == .amd64) {
            let package = ["mkfs.ext4": "e2fsprogs", "mkfs.vfat": "dosfstools", "mmd": "mtools", "mcopy": "mtools",
                "syslinux": "syslinux", "qemu-img": "qemu-utils"][tool] ?? tool
            throw DiskError.tool("\(tool) is not installed (Debian package: \(package))")
        }
        let gpt = options.partitionTable == .gpt

        // 1. Scan: flatten the layers' headers and look at what would boot.
        phase("scanning \(image.layers.count) layer(s)")
        // Scratch space beside the output for /boot's files saved while scanning (the reaper started by
        // `d2l build` removes it after a SIGKILL); the disk itself is a StagedFile, made once sized.
        let name = (output as NSString).lastPathComponent
        let hidden = ".\(name).d2l-\(getpid())"
        let scratch = outputDir + "/\(hidden).d"
        Cleanup.shared.add(scratch)
        defer {
            try? FileManager.default.removeItem(atPath: scratch)
            Cleanup.shared.remove(scratch)
        }
        try FileManager.default.createDirectory(atPath: scratch + "/scan", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: scratch + "/boot", withIntermediateDirectories: true)
        var flattener = LayerFlattener(
            capturePaths: BootFacts.capturePaths, headNames: BootFacts.headNames, captureNames: BootFacts.captureNames,
            capturePrefixes: BootLoaders.capturePrefixes, captureDirectory: scratch + "/scan")
        // A file that alone cannot fit is refused at its header, before a bomb of a layer is expanded.
        flattener.dataLimit = options.checkFreeSpace ? Self.availableBytes(outputDir) : nil
        // Blob digests are checked on the other core from now on, while the layers are scanned and written.
        let digests = LayerDigests(image.layers)
        // A gzip root file system has no digest: its CRC is checked instead (libarchive does not).
        let gzipCheck = GzipCheck(image.layers)
        defer { gzipCheck.cancel() }
        let tree: FileTree
        do {
            tree = try flattener.scan(image.layers, progress: progress)
        } catch ImageError.fileLargerThanOutput(let path, let layer, let bytes, let limit) {
            throw DiskError.noSpace(
                directory: outputDir, available: limit, needed: bytes,
                input: "\(image.path) (\(path) alone" + (layer == image.path ? ")" : ", in \(layer))"), whileWriting: false)
        } catch {
            // A damaged blob or stream is what explains a layer libarchive cannot read: say that first.
            try digests.wait()
            try await gzipCheck.wait()
            throw error
        }
        for warning in tree.warnings.prefix(20) { progress.note("warning: \(warning)") }
        let longNames = tree.paths(withNamesLongerThan: TreeWriter.maximumNameLength)
        guard longNames.isEmpty else { throw DiskError.nameTooLong(longNames.map(\.display).sorted()) }
        let facts = BootFacts.examine(tree, architecture: image.architecture, initOverride: options.initPath)
        guard facts.problems.isEmpty, let kernel = facts.kernel, let initrdPath = kernel.initrdPath else {
            throw DiskError.cannotBoot(facts.problems)
        }
        // The loaders and, for Secure Boot, the signed chain are checked before anything is written.
        // hybrid means every firmware the architecture has: UEFI alone on arm64.
        let architecture = facts.bootArchitecture ?? .amd64
        let mode: BootMode = !architecture.bootsUnderBIOS && options.bootMode == .hybrid ? .uefi : options.bootMode
        let bios = mode.bios
        let kernelFile = BootLoaders.imageFile(kernel.kernelPath.display, in: tree)
        if let kernelFile, let problem = Self.kernelArchitectureProblem(kernelFile, kernel: kernel, userland: architecture) {
            throw DiskError.cannotBoot([problem])
        }
        let loaders = try BootLoaders.choose(
            mode: mode, secureBoot: options.secureBoot, tree: tree, kernelFile: kernelFile, architecture: architecture)
        let bootCode = bios ? try BootPartition.mbrCode(gpt: gpt) : []
        try Self.placeCapturedBootFiles(tree, in: scratch + "/boot")
        progress.note("boot: \(options.partitionTable), \(loaders.description)")

        // 2. Identity: derived from the input and the epoch, so a rebuild is byte-identical.
        let epoch = options.sourceDateEpoch
        let seedText = (image.digest ?? "\(image.path):\(tree.stats.dataBytes):\(tree.stats.inodes)")
            + ":\(epoch.map(String.init) ?? "")"
        let seed = epoch != nil || image.digest != nil ? SHA256Hasher.hex(Data(seedText.utf8)) : SHA256Hasher.hex(Data(UUID().uuidString.utf8))
        let rootUUID = Self.uuid(fromHex: String(seed.prefix(32)))
        let hashSeed = Self.uuid(fromHex: String(SHA256Hasher.hex(Data((seed + "hash").utf8)).prefix(32)))
        let volumeID = UInt32(seed.dropFirst(32).prefix(8), radix: 16) ?? 0x1234_5678
        let signature = UInt32(seed.dropFirst(40).prefix(8), radix: 16) ?? 0x8765_4321
        func guid(_ purpose: String) -> GUID { GUID(seedHex: SHA256Hasher.hex(Data((seed + purpose).utf8))) }
        let mtime = epoch ?? Int64(Date().timeIntervalSince1970)

        var setup = UserlandSetup(
            hostname: options.hostname, rootUUID: rootUUID, bootVolumeID: volumeID,
            rootPassword: options.rootPassword, passwordSalt: String(seed.suffix(16)), mtime: mtime)
        setup.network = options.network
        setup.authorizedKeys = options.authorizedKeys
        setup.user = options.user
        setup.containerConfig = image.config
        setup.containerService = options.containerService
        setup.partitionTable = options.partitionTable
        setup.partitionUUIDs = gpt ? [guid("esp").description, guid("root").description] : []
        let userland = try setup.plan(for: tree, facts: facts)
        for note in userland.notes { progress.note(note) }
        for warning in userland.warnings { progress.note("warning: \(warning)") }
        let generated = LayerSource(
            location: .synthetic(userland.files), hasWhiteouts: true, size: 0, description: "files generated by d2l")
        let layers = image.layers + [generated]
        try flattener.overlay(generated, index: layers.count - 1, on: tree)

        // 3. Sizes.
        let kernelFromBoot = kernel.kernelPath.starts(with: ImagePath("boot/"))
        let loaderBytes = loaders.efiFiles.reduce(UInt64(0)) { total, file in
            var st = stat()
            let size = stat(file.source.file, &st) == 0 ? UInt64(st.st_size) : 0
            return total + (size + 4095) / 4096 * 4096
        }
        let bootBytes = Self.bootContentBytes(tree) + loaderBytes
            + (kernelFromBoot ? 0 : kernel.kernelSize + kernel.initrdSize)
        // The kernel and initrd, the loaders, an eighth and 8 MiB to spare; FAT16 below 512 MiB (UEFI
        // firmware refuses a FAT32 with too few clusters), FAT32 above.
        let bootSize = Self.roundUp(max(16 << 20, bootBytes + bootBytes / 8 + (8 << 20)), to: 1 << 20)
        let stats = tree.stats
        // Attributes too large for one block need ea_inode (and inodes for their values), or are
        // refused here, before any writing.
        let xattrNeeds = try TreeWriter.xattrNeeds(for: tree, blockSize: 4096, kernel: kernel.version)
        let features = xattrNeeds.features
        if !features.isEmpty {
            progress.note(
                "ext4 features \(features.joined(separator: ",")): the image has extended attributes larger than a block")
        }
        let inodeCount = UInt64(stats.inodes + xattrNeeds.valueInodes)
        let inodes = inodeCount + inodeCount / 4 + 1024
        // Directories: a block each, and the names' records (8 bytes + the name, padded to 4) beyond it.
        let directoryBytes = UInt64(stats.directories) * 4096 + UInt64(stats.nameBytes + 11 * stats.names)
        let contentBytes = stats.dataBlocks4K * 4096 + directoryBytes + UInt64(stats.longSymlinks) * 4096
            + stats.xattrBytes
        let headroom = max(UInt64(Double(contentBytes) * options.headroom), options.minimumHeadroom)
        let needed = Self.ext4Size(content: contentBytes, inodes: inodes, free: 0)
        var rootSize = Self.ext4Size(content: contentBytes, inodes: inodes, free: headroom)
        let firstSector: UInt64 = 2048
        if let size = options.size {
            let fixed = (firstSector * 512) + bootSize + (1 << 20)
            guard size > fixed + needed else { throw DiskError.tooSmall(requested: size, needed: fixed + needed) }
            rootSize = Self.roundDown(size - fixed, to: 1 << 20)
        }
        // The boot partition is /boot and the EFI system partition: on GPT of the ESP type (with
        // LegacyBIOSBootable for gptmbr.bin); on MBR active for mbr.bin, or of type 0xEF for UEFI only.
        let bootType: PartitionTable.PartitionType
        switch (gpt, bios) {
        case (true, _): bootType = .efiSystem
        case (false, true): bootType = BootPartition.fatBits(forBytes: bootSize) == 32 ? .fat32LBA : .fat16LBA
        case (false, false): bootType = .mbrEFISystem
        }
        let bootPart = PartitionTable.Partition(
            number: 1, type: bootType, firstSector: firstSector, sectorCount: bootSize / 512, bootable: bios,
            guid: gpt ? guid("esp") : .zero, name: gpt ? "ESP" : "")
        let rootPart = PartitionTable.Partition(
            number: 2, type: gpt ? .linuxRoot(architecture) : .mbrLinux, firstSector: firstSector + bootSize / 512,
            sectorCount: rootSize / 512, guid: gpt ? guid("root") : .zero, name: gpt ? "root" : "")
        // 1 MiB after the root: alignment, and room for GPT's backup entries and header.
        let diskSize = rootPart.byteOffset + rootPart.byteCount + (1 << 20)
        // The blocks written: data, directories and touched inode tables on ext4, the FAT's files,
        // the captured /boot files in the scratch folder; a converted disk lives beside the raw one
        // for a while, a containerDisk's qcow2 beside its layer and archive.
        let written = contentBytes + inodes * 256 + 2 * bootBytes + (4 << 20)
        let spaceNeeded = written * (format == .raw ? 1 : format == .containerdisk ? 3 : 2)
        neededBytes = spaceNeeded
        if options.checkFreeSpace, let available = Self.availableBytes(outputDir), available < spaceNeeded {
            throw DiskError.noSpace(
                directory: outputDir, available: available, needed: spaceNeeded, input: image.path, whileWriting: false)
        }

        // 4. Write into a file with no name in the output's directory; link it into place at the end.
        let disk = try StagedFile(directory: outputDir, fallbackName: hidden + ".tmp")
        defer { disk.discard() }
        let temp = disk.path
        try disk.truncate(to: diskSize)
        let table = PartitionTable(
            scheme: options.partitionTable, diskSectors: diskSize / 512, partitions: [bootPart, rootPart],
            diskSignature: signature, diskGUID: gpt ? guid("disk") : .zero)
        try table.write(toDisk: temp, bootCode: bootCode)

        phase("formatting ext4 (\(ProgressReporter.format(rootSize)))")
        var mkfsEnv: [String: String] = [:]
        if let epoch {
            mkfsEnv["E2FSPROGS_FAKE_TIME"] = String(epoch)
            mkfsEnv["MKE2FS_DETERMINISTIC"] = "1"
        }
        try await ProcessRunner.run(
            [
                "mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "1", "-L", "root", "-U", rootUUID,
                "-N", "\(inodes)",
            ] + (features.isEmpty ? [] : ["-O", features.joined(separator: ",")]) + [
                "-E", "offset=\(rootPart.byteOffset),hash_seed=\(hashSeed),lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                temp, "\(rootSize / 1024)k",
            ], environment: mkfsEnv)

        // A kernel kept outside /boot (/usr/lib/modules/V/vmlinuz) is copied out while ext4 is written.
        var extraCaptures: [ImagePath: String] = [:]
        if !kernelFromBoot {
            extraCaptures[kernel.kernelPath] = scratch + "/vmlinuz-\(kernel.version)"
            if !initrdPath.starts(with: ImagePath("boot/")) {
                extraCaptures[initrdPath] = scratch + "/initrd.img-\(kernel.version)"
            }
        }
        let extraFiles = extraCaptures.values.sorted()

        // The FAT partition is made on the other core while the root is written.
        let boot = BootPartition(diskPath: temp, partition: bootPart, volumeID: volumeID, epoch: epoch)
        let kernelName = kernelFromBoot ? String(decoding: kernel.kernelPath.splitParent.name, as: UTF8.self)
            : "vmlinuz-\(kernel.version)"
        let initrdName = initrdPath.starts(with: ImagePath("boot/"))
            ? String(decoding: initrdPath.dropFirst(5), as: UTF8.self) : "initrd.img-\(kernel.version)"
        let cmdline = (["root=UUID=\(rootUUID)", "ro", "console=tty0", "console=\(architecture.serialConsole),115200"]
            + (options.append.isEmpty ? [] : [options.append])).joined(separator: " ")
        let title = facts.distro.isEmpty ? "Linux \(kernel.version)" : facts.distro
        try loaders.stage(
            into: scratch + "/boot", kernel: kernelName, initrd: initrdName, commandLine: cmdline, title: title)
        let bootJob = Task { [boot, scratch, epoch] in
            try await DiskBuilder.fillBootPartition(boot, scratch: scratch, epoch: epoch, syslinux: bios)
        }

        phase("writing ext4 root (\(ProgressReporter.format(stats.dataBytes)) in \(stats.regularFiles) files)")
        let writtenTree: TreeWriter.Result
        do {
            let sync = options.sync
            let progress = progress
            let extraCaptures = extraCaptures
            nonisolated(unsafe) let tree = tree
            writtenTree = try await BackgroundJob.run {
                let ext4 = try Ext4Writer(path: temp, offset: Int64(rootPart.byteOffset), timestamp: epoch)
                if sync { ext4.startWritebackEvery = 32 << 20 }
                let writer = TreeWriter(bootDirectory: scratch + "/boot", extraCaptures: extraCaptures)
                let written = try writer.write(tree: tree, layers: layers, to: ext4, progress: progress, digests: digests)
                try ext4.close()
                return written
            }
        } catch {
            _ = try? await bootJob.value
            throw error
        }
        progress.done()

        phase("writing FAT boot partition")
        try await bootJob.value
        if !extraFiles.isEmpty { try await boot.copy(extraFiles, toDirectory: "") }
        var warnings = userland.warnings
        let initrdFile = [scratch + "/boot/" + initrdName, scratch + "/initrd.img-\(kernel.version)"]
            .first { FileManager.default.fileExists(atPath: $0) }
        if let initrdFile, let warning = InitrdDriverCheck.warning(
            initrdFile: initrdFile, initrdName: initrdPath.display, kernel: kernel.version.text, tree: tree)
        {
            progress.note("warning: \(warning)")
            warnings.append(warning)
        }

        try await gzipCheck.wait()

        // Every stage is a StagedFile in the output's directory; each one discards the one before.
        var final = disk
        var finals: [StagedFile] = []
        defer { for file in finals { file.discard() } }
        if format != .raw {
            phase("converting to \(format.qemuFormat)")
            let converted = try StagedFile(directory: outputDir, fallbackName: hidden + "." + format.qemuFormat)
            finals.append(converted)
            try await ProcessRunner.run(
                ["qemu-img", "convert", "-f", "raw", "-O", format.qemuFormat, final.path, converted.path])
            final.discard()
            final = converted
        }
        if format == .containerdisk {
            phase("packing a KubeVirt containerDisk")
            let archive = try StagedFile(directory: outputDir, fallbackName: hidden + ".oci.tar")
            finals.append(archive)
            try ContainerDiskWriter.write(
                disk: final.path, name: "disk.qcow2", architecture: architecture.rawValue, mtime: mtime, output: archive.path,
                scratch: scratch)
            final.discard()
            final = archive
        }
        if options.sync {
            phase("syncing to the device")
            try final.sync()
        }
        do {
            try final.commit(to: output, replace: options.force)
        } catch let error as StagedFileError where error.code == EEXIST {
            throw DiskError.outputExists(output)
        }
        if options.sync { try Self.fsync(path: outputDir, directory: true) }
        endPhase()
        progress.done()

        var st = stat()
        stat(output, &st)
        return BuildSummary(
            input: image.path, inputFormat: image.format.rawValue, inputDigest: image.digest.map { "sha256:" + $0 },
            distro: facts.distro, kernelVersion: kernel.version.text, initSystem: facts.initSystem.rawValue,
            output: output, format: format.rawValue, diskBytes: UInt64(st.st_size),
            allocatedBytes: UInt64(st.st_blocks) * 512, contentBytes: writtenTree.bytesWritten,
            files: writtenTree.filesWritten, rootUUID: rootUUID, bootMode: mode.rawValue,
            partitionTable: options.partitionTable.rawValue,
            efiLoader: loaders.efiLoader.map { "\($0) (\(loaders.efiFiles.map(\.source.origin).joined(separator: ", ")))" },
            phases: phases, setup: userland.notes, warnings: warnings)
    }

    /// Copies the captured /boot files onto the FAT partition, one mcopy per directory.
    /// Moves the /boot files saved while scanning to their names under `directory`.
    /// Why the kernel at `file` cannot boot a userland of `architecture`: its header is the other
    /// architecture's (an x86 bzImage, an arm64 Image), as in a mislabelled or mixed-up image; nil
    /// otherwise, a compressed or unknown kernel file included (its boot is the verifier's to judge).
    static func kernelArchitectureProblem(_ file: String, kernel: BootFacts.Kernel, userland: Architecture) -> String? {
        guard let handle = FileHandle(forReadingAtPath: file) else { return nil }
        defer { try? handle.close() }
        guard let found = Architecture(kernelHeader: (try? handle.read(upToCount: 0x210)) ?? Data()), found != userland
        else { return nil }
        return "/\(kernel.kernelPath.display) is an \(found) kernel and the userland is \(userland): install the "
            + "\(userland) kernel in the image (Debian: \(userland.debianKernelPackage))"
    }

    static func placeCapturedBootFiles(_ tree: FileTree, in directory: String) throws {
        guard let boot = tree.lookup(ImagePath("boot")), boot.kind == .directory else { return }
        var stack: [(String, TreeNode)] = [("", boot)]
        while let (relative, node) = stack.popLast() {
            for (name, child) in node.children {
                let rel = relative.isEmpty ? String(decoding: name, as: UTF8.self)
                    : relative + "/" + String(decoding: name, as: UTF8.self)
                if child.kind == .directory {
                    try FileManager.default.createDirectory(
                        atPath: directory + "/" + rel, withIntermediateDirectories: true)
                    stack.append((rel, child))
                } else if let file = child.capturedFile {
                    guard rename(file, directory + "/" + rel) == 0 else {
                        throw DiskError.io(file, message: String(cString: strerror(errno)))
                    }
                }
            }
        }
    }

    /// Formats the FAT partition, copies /boot's files and the loaders with their configuration, and
    /// installs syslinux into /syslinux (which must exist first).
    static func fillBootPartition(_ boot: BootPartition, scratch: String, epoch: Int64?, syslinux: Bool) async throws {
        try await boot.format(epoch: epoch)
        try await copyBootTree(scratch + "/boot", boot: boot, mtime: epoch)
        if syslinux { try await boot.installSyslinux() }
    }

    /// Copies the staged /boot tree: one mmd for every directory, then one mcopy per directory, in
    /// sorted order so that the FAT's directory entries do not depend on the host's readdir order.
    private static func copyBootTree(_ root: String, boot: BootPartition, mtime: Int64?) async throws {
        var directories: [String] = []
        var files: [(directory: String, paths: [String])] = []
        var pending = [""]
        while let relative = pending.popLast() {
            let dir = relative.isEmpty ? root : root + "/" + relative
            var here: [String] = []
            var subdirectories: [String] = []
            for name in try FileManager.default.contentsOfDirectory(atPath: dir).sorted() {
                let path = dir + "/" + name
                let rel = relative.isEmpty ? name : relative + "/" + name
                var isDir: ObjCBool = false
                _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
                if isDir.boolValue {
                    directories.append(rel)
                    subdirectories.append(rel)
                } else {
                    if let mtime { Self.setMtime(path, mtime) }
                    here.append(path)
                }
            }
            if !here.isEmpty { files.append((relative, here)) }
            pending += subdirectories.reversed()
        }
        try await boot.mkdir(directories)
        for (directory, paths) in files { try await boot.copy(paths, toDirectory: directory) }
    }

    static func fsync(path: String, directory: Bool) throws {
        let fd = open(path, (directory ? O_RDONLY | O_DIRECTORY : O_WRONLY) | O_CLOEXEC)
        guard fd >= 0, Glibc.fsync(fd) == 0 else {
            let message = String(cString: strerror(errno))
            if fd >= 0 { close(fd) }
            throw DiskError.io(path, message: "fsync: \(message)")
        }
        close(fd)
    }

    static func setMtime(_ path: String, _ seconds: Int64) {
        var times = [timespec(tv_sec: Int(seconds), tv_nsec: 0), timespec(tv_sec: Int(seconds), tv_nsec: 0)]
        utimensat(AT_FDCWD, path, &times, 0)
    }

    /// Bytes of regular files under /boot (they go to the FAT partition).
    static func bootContentBytes(_ tree: FileTree) -> UInt64 {
        guard let boot = tree.lookup(ImagePath("boot")) else { return 0 }
        var total: UInt64 = 0
        var stack = [boot]
        while let node = stack.popLast() {
            for child in node.children.values {
                if child.kind == .directory { stack.append(child) } else { total += (child.size + 4095) / 4096 * 4096 }
            }
        }
        return total
    }

    /// The size of an ext4 file system holding `content` bytes of blocks and `inodes`
    /// inodes with `free` bytes to spare: adds the journal mke2fs will make, the inode
    /// tables, bitmaps and group descriptors, and the 1% reserved for root.
    static func ext4Size(content: UInt64, inodes: UInt64, free: UInt64) -> UInt64 {
        var size = content + free + inodes * 256
        for _ in 0..<4 {
            let blocks = size / 4096
            let groups = blocks / 32768 + 1
            let overhead = journalBlocks(forFilesystemBlocks: blocks) * 4096 + groups * 3 * 4096 + (1 << 20)
            size = (content + free + inodes * 256 + overhead) * 101 / 100
        }
        return roundUp(size, to: 1 << 20)
    }

    /// mke2fs's default journal size (ext2fs_default_journal_size) for a file system of this many blocks.
    static func journalBlocks(forFilesystemBlocks blocks: UInt64) -> UInt64 {
        switch blocks {
        case ..<2048: return 0
        case ..<32768: return 1024
        case ..<(256 * 1024): return 4096
        case ..<(512 * 1024): return 8192
        case ..<(4096 * 1024): return 16384
        case ..<(8192 * 1024): return 32768
        case ..<(16384 * 1024): return 65536
        case ..<(32768 * 1024): return 131072
        default: return 262144
        }
    }

    static func uuid(fromHex hex: String) -> String {
        var chars = Array(hex.prefix(32))
        chars[12] = "4"  // version 4 layout, variant 10xx
        let variant = (Int(String(chars[16]), radix: 16) ?? 0) & 0x3 | 0x8
        chars[16] = Character(String(variant, radix: 16))
        let s = String(chars)
        let i = s.startIndex
        func sub(_ a: Int, _ b: Int) -> Substring { s[s.index(i, offsetBy: a)..<s.index(i, offsetBy: b)] }
        return "\(sub(0, 8))-\(sub(8, 12))-\(sub(12, 16))-\(sub(16, 20))-\(sub(20, 32))"
    }

    static func roundUp(_ value: UInt64, to unit: UInt64) -> UInt64 { (value + unit - 1) / unit * unit }
    static func roundDown(_ value: UInt64, to unit: UInt64) -> UInt64 { value / unit * unit }

    /// The bytes this process may still write in `directory`'s file system (root may use the reserve).
    static func availableBytes(_ directory: String) -> UInt64? {
        var fs = statvfs()
        guard statvfs(directory, &fs) == 0 else { return nil }
        return UInt64(geteuid() == 0 ? fs.f_bfree : fs.f_bavail) * UInt64(fs.f_frsize)
    }

    /// `error` as `DiskError.noSpace` when it came from the output's file system filling up: its
    /// message says so (ENOSPC, EDQUOT, through libext2fs, mtools or qemu-img), or a tool failed while
    /// the file system has next to nothing left (the failed disk still holds its blocks). Other errors
    /// are returned as they are.
    static func explainFullFileSystem(
        _ error: any Error, directory: String, needed: UInt64?, input: String
    ) -> any Error {
        if case DiskError.noSpace = error { return error }
        let text = "\(error)"
        let available = availableBytes(directory)
        let saysFull = text.contains(String(cString: strerror(ENOSPC))) || text.contains(String(cString: strerror(EDQUOT)))
            || (error as? StagedFileError).map { $0.code == ENOSPC || $0.code == EDQUOT } == true
        // An image that cannot boot, an existing output...: the user's to fix, whatever the free space.
        let usage = (error as? any CategorizedError)?.category == .usage
        guard saysFull || (!usage && available.map { $0 < 1 << 20 } ?? false) else { return error }
        return DiskError.noSpace(
            directory: directory, available: available ?? 0, needed: needed, input: input, whileWriting: true)
    }
}
