import D2LDiskModel
import D2LImage
import D2LSupport
import D2LVerify
import Foundation

/// How the kernels of a bisection are ordered.
public enum BisectOrder: String, Sendable, Codable, CaseIterable {
    /// By the release in each bzImage header (`KernelVersion`), then by name.
    case version
    /// As listed.
    case given
}

/// Everything `d2l bisect` is asked to do.
public struct BisectRequest: Sendable {
    /// The disk whose root file system every kernel boots.
    public var image: String
    /// A kernel that boots and one that does not: names from the list, or paths.
    public var good: String
    public var bad: String
    /// Kernels (bzImages or linux-image .deb packages) besides --good and --bad.
    public var kernels: [String] = []
    /// A directory whose bzImages and .deb packages are kernels too.
    public var kernelDirectory: String?
    public var order: BisectOrder = .version
    /// One initrd for every kernel, none (`noInitrd`), or the one beside each kernel.
    public var initrd: String?
    public var noInitrd = false
    /// Make an initrd with the image's own tools for bzImages with none beside them.
    public var makeInitrd = false
    /// Do not boot --good and --bad at the end when the search did not.
    public var trustEnds = false
    public var append: String?
    /// More boots of a kernel that fails before it is called bad.
    public var retries = 0
    /// The state file that lets an interrupted bisection resume.
    public var state = "d2l-bisect.json"
    public var restart = false
    public var machine = MachineRequest()
    /// Overall limit of each boot, in seconds.
    public var timeout = 600

    public init(image: String, good: String, bad: String) {
        self.image = image
        self.good = good
        self.bad = bad
    }

    /// Checks the options that exclude or need each other.
    ///
    /// - Throws: `BisectError.badOption` naming the options; `VerifyError.badOption` for the machine's.
    public func validate() throws {
        try machine.validate()
        if initrd != nil && noInitrd { throw BisectError.badOption("--initrd and --no-initrd exclude each other") }
        if makeInitrd && (initrd != nil || noInitrd) {
            throw BisectError.badOption("--make-initrd goes with neither --initrd nor --no-initrd")
        }
        if retries < 0 { throw BisectError.badOption("--retries must be 0 or more") }
        if timeout <= 0 { throw BisectError.badOption("--timeout must be positive") }
    }

    var statePath: String { URL(fileURLWithPath: state).standardizedFileURL.path }

    /// The kernel list in bisection order, with the indexes of --good and --bad.
    ///
    /// - Throws: `BisectError` when a kernel, package or the --initrd cannot be used, or --good/--bad
    ///   name no kernel; `VerifyError.notAKernel` for a file that is not a bzImage.
    public func kernelList() throws -> (kernels: [BisectKernel], good: Int, bad: Int) {
        let choice: BisectKernel.InitrdChoice
        if noInitrd {
            choice = .none
        } else if let initrd {
            guard FileManager.default.isReadableFile(atPath: initrd) else {
                throw BisectError.badOption("\(initrd): the --initrd cannot be read")
            }
            choice = .file(initrd)
        } else {
            choice = .beside
        }
        let packages = statePath + ".kernels"
        /// The initrd made with the image's tools, when it comes to boot: beside the kernel's copy in `packages`.
        func planBuild(_ kernel: inout BisectKernel, package: String?) {
            guard ImageInitramfs.isSafeRelease(kernel.release) else {
                kernel.initrdSource = "none: the release '\(kernel.release)' cannot name an initrd file"
                return
            }
            // A package's own folder; for a bzImage, one per release (its modules come from the image).
            let folder = URL(fileURLWithPath: packages).appendingPathComponent(
                package.map { URL(fileURLWithPath: $0).deletingPathExtension().lastPathComponent }
                    ?? "initrd-" + kernel.release)
            kernel.initrd = folder.appendingPathComponent("initrd.img-" + kernel.release).path
            kernel.initrdBuild = .init(package: package.map { URL(fileURLWithPath: $0).standardizedFileURL.path })
            kernel.initrdSource = "made with the image's initramfs tools, modules from "
                + (package == nil ? "the image" : "the .deb")
        }
        func load(_ path: String, name: String? = nil) throws -> BisectKernel {
            guard DebianPackage.isPackage(path: path) else {
                var kernel = try BisectKernel.load(path: path, name: name, initrd: choice)
                if makeInitrd, kernel.initrd == nil { planBuild(&kernel, package: nil) }
                return kernel
            }
            let extracted = try DebianPackage.extractKernel(fromPackage: path, into: packages)
            var kernel = try BisectKernel.load(
                path: extracted, name: name ?? path, initrd: choice == .beside ? .none : choice)
            if choice == .beside {
                let full = URL(fileURLWithPath: path).standardizedFileURL
                let found = BisectKernel.besideInitrd(
                    kernel: full.deletingLastPathComponent().path + "/vmlinuz-" + kernel.release)
                    ?? (FileManager.default.fileExists(atPath: full.path + ".initrd") ? full.path + ".initrd" : nil)
                kernel.initrd = found
                kernel.initrdSource = "beside the .deb"
                if found == nil { planBuild(&kernel, package: path) }
            }
            return kernel
        }
        var list: [BisectKernel] = []
        if let kernelDirectory {
            list += try BisectKernel.discover(in: kernelDirectory, initrd: choice) { try load($0, name: $1) }
        }
        for path in kernels { list.append(try load(path)) }

        func find(_ wanted: String) -> Int? {
            let full = URL(fileURLWithPath: wanted).standardizedFileURL.path
            return list.firstIndex { $0.name == wanted || $0.kernel == full }
                ?? list.firstIndex { URL(fileURLWithPath: $0.name).standardizedFileURL.path == full }
                ?? list.firstIndex { URL(fileURLWithPath: $0.kernel).lastPathComponent == wanted }
        }
        if find(good) == nil { list.insert(try load(good), at: 0) }
        if find(bad) == nil { list.append(try load(bad)) }
        if order == .version { list = KernelOrder.sorted(list) }
        guard let goodIndex = find(good), let badIndex = find(bad) else {
            throw BisectError.kernels("--good and --bad must name kernels")
        }
        return (list, goodIndex, badIndex)
    }
}

/// Runs a `BisectRequest`: opens the disk once, assembles the kernels, probes the accelerator, makes
/// initrds with the image's tools when needed, and searches, saving the state after every step.
public enum BisectSession {
    /// - Throws: `BisectError`, `VerifyError`, `DiskModelError` or `LibvirtError` when it cannot bisect
    ///   (exit 125); the result says whether the first bad kernel is known exactly.
    public static func run(
        _ request: BisectRequest, note: @escaping @Sendable (String) -> Void,
        progress: @escaping @Sendable (BisectProgress) -> Void
    ) async throws -> BisectResult {
        let path = URL(fileURLWithPath: request.image).standardizedFileURL.path
        let disk = try DiskImage.open(path)
        try await DiskVerifier.refuseOverlay(disk)
        defer { RemoteUploads.shared.removeAll() }
        let (list, goodIndex, badIndex) = try request.kernelList()
        let bus = request.machine.diskBus
        let statePath = request.statePath
        let transcripts = statePath + ".transcripts"
        try FileManager.default.createDirectory(atPath: transcripts, withIntermediateDirectories: true)

        let hypervisor = try LibvirtHypervisor(uri: request.machine.connect ?? LibvirtHypervisor.defaultURI())
        // The architecture is the good kernel's, which must be the disk's (arm64 kernels boot arm64 disks).
        let architecture = try DiskVerifier.architecture(
            disk: disk, setup: nil, kernel: try KernelImage(path: list[goodIndex].kernel))
        var spec = MachineSpec(
            diskPath: path, diskFormat: disk.format, accelerator: .tcg, memoryMiB: request.machine.memoryMiB,
            cpus: request.machine.cpus, diskBus: bus, network: request.machine.network, architecture: architecture)
        let root = (
            withInitrd: disk.rootArgument(device: bus.devicePrefix, initrd: true),
            withoutInitrd: disk.rootArgument(device: bus.devicePrefix, initrd: false))
        var plan = StagePlan(
            stages: StagePlan.defaultStages(initSystem: disk.guest?.initSystem ?? .unknown),
            failures: StagePlan.defaultFailures(), timeout: .seconds(request.timeout))
        if architecture != .host { plan.allowForEmulation() }
        // Probe KVM with the good kernel booting the disk, as d2l verify --kernel would (without its initrd
        // when that is yet to be made: the probe only waits for the kernel's banner).
        var probe = spec
        let probeInitrd = list[goodIndex].initrd.flatMap { FileManager.default.isReadableFile(atPath: $0) ? $0 : nil }
        probe.directBoot = DirectKernelBoot(
            kernel: list[goodIndex].kernel, initrd: probeInitrd,
            commandLine: DirectKernelBoot.commandLine(
                root: probeInitrd == nil ? root.withoutInitrd : root.withInitrd, extra: request.append,
                architecture: architecture))
        let (accelerator, warning) = await AcceleratorProbe.shared.resolve(
            request.machine.accelerator, hypervisor: hypervisor, probe: probe)
        if let warning { note(warning) }
        spec.accelerator = accelerator
        let initramfs = ImageInitramfs(image: path, format: disk.format, workDirectory: statePath + ".initramfs-root")
        let cleanupToken = Cleanup.shared.addAction { initramfs.stop() }
        defer { Cleanup.shared.removeAction(cleanupToken) }
        let judge = KernelBootJudge(
            hypervisor: hypervisor, machine: spec, plan: plan, root: root, append: request.append,
            transcriptDirectory: transcripts
        ) { kernel in
            guard let build = kernel.initrdBuild, let output = kernel.initrd else { return }
            do {
                try await initramfs.build(
                    release: kernel.release, package: build.package, kernel: kernel.kernel, output: output, note: note)
            } catch BisectError.stopped {
                // Interrupted: the bisector must not record this as a kernel that could not be tested.
                withUnsafeCurrentTask { $0?.cancel() }
                throw BisectError.stopped
            }
        }

        note(
            "\(request.image): \(architecture), \(disk.format), \(bus.rawValue), \(accelerator.rawValue); "
                + "\(disk.guest?.prettyName ?? "unknown OS"); root=\(root.withInitrd) (\(root.withoutInitrd) without an initrd)")
        for (index, kernel) in list.enumerated() {
            let mark = index == goodIndex ? "  good" : index == badIndex ? "  bad" : ""
            note(
                String(format: "%3d  ", index) + "\(kernel.name)  \(kernel.release)  initrd: "
                    + (kernel.initrd.map { "\($0) (\(kernel.initrdSource))" } ?? kernel.initrdSource) + mark)
        }

        let bisector = KernelBisector(stateFile: statePath, recordEnds: !request.trustEnds) { kernel, index, attempt in
            await judge.judge(kernel, index: index, attempt: attempt)
        }
        let fresh = BisectState(image: path, kernels: list, good: goodIndex, bad: badIndex, retries: request.retries)
        let initial = try bisector.start(fresh, restart: request.restart)
        if initial.steps.isEmpty && (initial.endSteps ?? []).isEmpty {
            // A new bisection makes its initrds anew: the image may have changed since the last one.
            for kernel in list where kernel.initrdBuild != nil {
                if let initrd = kernel.initrd { try? FileManager.default.removeItem(atPath: initrd) }
            }
        }
        // What making initrds needs is checked once, now: its absence is not a verdict on any kernel.
        let result: BisectResult
        do {
            if list.contains(where: { $0.initrdBuild != nil && !FileManager.default.fileExists(atPath: $0.initrd ?? "") }) {
                try await initramfs.preflight(note: note)
            }
            let total = KernelBisector.maximumSteps(kernels: badIndex - goodIndex + 1)
            let between = badIndex - goodIndex - 1
            note(
                "bisecting \(between) kernel\(between == 1 ? "" : "s") between good and bad: "
                    + "at most \(total) step\(total == 1 ? "" : "s")")
            result = try await bisector.run(initial, progress: progress)
        } catch {
            await initramfs.removeWorkTree()
            throw error
        }
        await initramfs.removeWorkTree()
        return result
    }
}
