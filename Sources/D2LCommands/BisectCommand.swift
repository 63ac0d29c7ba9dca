import ArgumentParser
import D2LBisect
import D2LImage
import D2LSupport
import D2LVerify
import Foundation

/// `d2l bisect`: binary-search an ordered list of kernels for the first that does not boot a disk's root.
struct BisectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bisect",
        abstract: "Find the first kernel that does not boot.",
        discussion: """
            Boots the root file system of --image with one kernel after another (libvirt's direct \
            kernel boot, judged as by d2l verify --kernel) and binary-searches the ordered list \
            between --good and --bad for the first kernel that does not boot: at most \
            ceil(log2(n-1)) boots for n kernels, plus retries. Kernels are ordered by the version \
            in their bzImage header unless --order given.

            Each kernel boots with the initrd beside it (vmlinuz-R -> initrd.img-R, initrd-R.img, \
            initramfs-R.img, or KERNEL.initrd), or with --initrd FILE, or none with --no-initrd; \
            the log says which. A linux-image .deb gives its boot/vmlinuz-R (read in place with \
            libarchive, saved beside the state file); its initrd is initrd.img-R or PACKAGE.initrd \
            beside the .deb when there is one. Otherwise d2l makes it the way Debian does on an \
            installed system: with the image's own initramfs tools (mkinitramfs or dracut), run \
            chrooted in a copy of the disk's root (debugfs rdump) inside a user namespace, with \
            the .deb's modules added; it is made just before the kernel first boots and kept \
            beside the state file. --make-initrd does the same for bzImages with nothing beside \
            them, whose modules must then be in the image.

            A made initrd uses the image's initramfs configuration with RESUME=none and \
            MODULES=most (the host is not the machine that boots); the copy of the root stays in \
            STATE.initramfs-root while the bisection runs and is deleted at its end.

            When the search has not booted --good or --bad, each is booted once at the end so \
            that both ends have a transcript (and are checked: an end that boots against its \
            label makes the result inexact); --trust-ends saves those boots.

            After every step the state goes to --state, so an interrupted bisection resumes where \
            it stopped when run again with the same arguments. Console transcripts go to the \
            directory beside it (STATE.transcripts).

            EXIT STATUS
              0    the first bad kernel is named
              1    kernels that could not be tested lie between the last good and the first bad: \
            the first bad is one of those named
              125  could not bisect: bad options, no kernels, a state file of another bisection, \
            libvirt unusable
            """)

    @Option(help: "The disk whose root file system every kernel boots (built by d2l build).")
    var image: String

    @Option(help: "A kernel that boots: a name from the list or a path to a bzImage.")
    var good: String

    @Option(help: "A kernel that does not boot: a name from the list or a path to a bzImage.")
    var bad: String

    @Argument(help: "The kernels (bzImage files or linux-image .deb packages) to search, besides --good and --bad.")
    var kernels: [String] = []

    @Option(name: .customLong("kernels"), help: "A directory whose bzImages and .deb packages are the kernels to search.")
    var kernelDirectory: String?

    @Option(help: "Kernel order: version (by the bzImage header's release, then name) or given (as listed).")
    var order: String = "version"

    @Option(help: "Boot every kernel with this initrd instead of the one beside it.")
    var initrd: String?

    @Flag(help: "Boot the kernels without an initrd (disk and file system drivers built in).")
    var noInitrd = false

    @Flag(
        help: """
            Make an initrd with the image's initramfs tools for bzImages with none beside them (their \
            modules must be in the image); always done for .deb kernels with none beside them.
            """)
    var makeInitrd = false

    @Flag(help: "Do not boot --good and --bad at the end when the search did not (their transcripts are then missing).")
    var trustEnds = false

    @Option(
        name: .customLong("append"),
        help: "More kernel command line after root=<the disk's root> ro (the consoles come last).")
    var appendArguments: String?

    @Option(help: "Boot a kernel that fails up to this many more times before calling it bad.")
    var retries: Int = 0

    @Option(help: "The state file that lets an interrupted bisection resume.")
    var state: String = "d2l-bisect.json"

    @Flag(help: "Start over even when --state holds steps of this bisection.")
    var restart = false

    @OptionGroup(title: "Machine")
    var machine: MachineOptions

    @Option(help: "Overall limit in seconds for each boot.")
    var timeout: Int = 600

    @Flag(help: "Print the result as JSON on stdout.")
    var json = false

    init() {}

    /// Problems with the options exit 125, like d2l verify's.
    func validate() throws {
        var problem: String?
        do { _ = try machine.checked() } catch { problem = "\(error)" }
        if order != "version" && order != "given" { problem = "--order must be version or given, not '\(order)'" }
        if initrd != nil && noInitrd { problem = "--initrd and --no-initrd exclude each other" }
        if makeInitrd && (initrd != nil || noInitrd) { problem = "--make-initrd goes with neither --initrd nor --no-initrd" }
        if retries < 0 { problem = "--retries must be 0 or more" }
        if timeout <= 0 { problem = "--timeout must be positive" }
        if let problem {
            FileHandle.standardError.write(Data("Error: \(problem)\n".utf8))
            throw ExitCode(125)
        }
    }

    func run() async throws {
        Cleanup.shared.installSignalHandlers()
        do {
            let result = try await bisect()
            if !result.isExact { throw ExitCode(1) }
        } catch let error as ExitCode {
            throw error
        } catch {
            FileHandle.standardError.write(Data("d2l bisect: could not bisect: \(error)\n".utf8))
            throw ExitCode(125)
        }
    }

    /// The kernel list in bisection order, with the indexes of --good and --bad.
    private func kernelList() throws -> (kernels: [BisectKernel], good: Int, bad: Int) {
        let choice: BisectKernel.InitrdChoice
        if noInitrd {
            choice = .none
        } else if let initrd {
            guard FileManager.default.isReadableFile(atPath: initrd) else {
                throw VerifyError.unreadableImage(path: initrd, reason: "the --initrd cannot be read")
            }
            choice = .file(initrd)
        } else {
            choice = .beside
        }
        let packages = URL(fileURLWithPath: state).standardizedFileURL.path + ".kernels"
        /// The initrd made with the image's tools, when it comes to boot: beside the kernel's copy in `packages`.
        func planBuild(_ kernel: inout BisectKernel, package: String?) {
            guard ImageInitramfs.isSafeRelease(kernel.release) else {
                kernel.initrdSource = "none: the release '\(kernel.release)' cannot name an initrd file"
                return
            }
            // A package's own folder; for a bzImage, one per release (its modules come from the image).
            let folder = URL(fileURLWithPath: packages).appendingPathComponent(
                package.map { URL(fileURLWithPath: $0).deletingPathExtension().lastPathComponent } ?? "initrd-" + kernel.release)
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
            let extracted = try Self.extractKernel(fromPackage: path, into: packages)
            var kernel = try BisectKernel.load(path: extracted, name: name ?? path, initrd: choice == .beside ? .none : choice)
            if choice == .beside {
                let full = URL(fileURLWithPath: path).standardizedFileURL
                let found = BisectKernel.besideInitrd(kernel: full.deletingLastPathComponent().path + "/vmlinuz-" + kernel.release)
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
        if order == "version" { list = KernelOrder.sorted(list) }
        guard let goodIndex = find(good), let badIndex = find(bad) else {
            throw VerifyError.badOption("--good and --bad must name kernels")
        }
        return (list, goodIndex, badIndex)
    }

    /// Takes boot/vmlinuz-* out of a linux-image .deb into `directory`/<package>/; libarchive reads the
    /// package's data.tar in place, as a byte range of the .deb.
    static func extractKernel(fromPackage deb: String, into directory: String) throws -> String {
        let member = try DebianPackage.dataMember(path: deb)
        let source = LayerSource(
            location: .range(deb, offset: member.offset, length: member.size), hasWhiteouts: false, size: member.size,
            description: "\(deb) \(member.name)")
        let stream = try source.open()
        defer { try? stream.finish() }
        while let entry = try stream.next() {
            let path = String(decoding: entry.path, as: UTF8.self)
            guard DebianPackage.isKernelPath(path), case .regular = entry.kind else { continue }
            let target = URL(fileURLWithPath: directory)
                .appendingPathComponent(URL(fileURLWithPath: deb).deletingPathExtension().lastPathComponent)
            try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
            let file = target.appendingPathComponent(URL(fileURLWithPath: path).lastPathComponent)
            try Data(try stream.readAll(limit: 256 << 20)).write(to: file, options: .atomic)
            return file.path
        }
        throw VerifyError.notAKernel(path: deb, reason: "the package has no boot/vmlinuz-*: not a linux-image package")
    }

    private func bisect() async throws -> BisectResult {
        let path = URL(fileURLWithPath: image).standardizedFileURL.path
        guard FileManager.default.fileExists(atPath: path) else { throw VerifyError.missingImage(path: path) }
        let format = try DiskFormat.detect(path: path)
        let guest = GuestInspector.inspect(path: path, format: format)
        let (list, goodIndex, badIndex) = try kernelList()
        let progress = ProgressReporter()
        let bus = DiskBus(rawValue: machine.diskBus) ?? .virtio
        let statePath = URL(fileURLWithPath: state).standardizedFileURL.path
        let transcripts = statePath + ".transcripts"
        try FileManager.default.createDirectory(atPath: transcripts, withIntermediateDirectories: true)

        let hypervisor = try LibvirtHypervisor(uri: machine.connect ?? LibvirtHypervisor.defaultURI())
        var spec = MachineSpec(
            diskPath: path, diskFormat: format, accelerator: .tcg, memoryMiB: machine.memory, cpus: machine.cpus, diskBus: bus)
        let root = (
            withInitrd: GuestInspector.rootDevice(path: path, format: format, bus: bus),
            withoutInitrd: GuestInspector.rootDevice(path: path, format: format, bus: bus, initrd: false))
        let plan = StagePlan(
            stages: StagePlan.defaultStages(initSystem: guest?.initSystem ?? .unknown),
            failures: StagePlan.defaultFailures(), timeout: .seconds(timeout))
        // Probe KVM with the good kernel booting the disk, as d2l verify --kernel would (without its initrd
        // when that is yet to be made: the probe only waits for the kernel's banner).
        var probe = spec
        let probeInitrd = list[goodIndex].initrd.flatMap { FileManager.default.isReadableFile(atPath: $0) ? $0 : nil }
        probe.directBoot = DirectKernelBoot(
            kernel: list[goodIndex].kernel, initrd: probeInitrd,
            commandLine: DirectKernelBoot.commandLine(
                root: probeInitrd == nil ? root.withoutInitrd : root.withInitrd, extra: appendArguments))
        let (accelerator, warning) = await AcceleratorProbe.shared.resolve(
            Accelerator(rawValue: machine.accel) ?? .auto, hypervisor: hypervisor, probe: probe)
        if let warning { progress.note(warning) }
        spec.accelerator = accelerator
        let initramfs = ImageInitramfs(image: path, format: format, workDirectory: statePath + ".initramfs-root")
        let cleanupToken = Cleanup.shared.addAction { initramfs.stop() }
        defer {
            initramfs.removeWorkTree()
            Cleanup.shared.removeAction(cleanupToken)
        }
        let judge = KernelBootJudge(
            hypervisor: hypervisor, machine: spec, plan: plan, root: root, append: appendArguments,
            transcriptDirectory: transcripts
        ) { kernel in
            guard let build = kernel.initrdBuild, let output = kernel.initrd else { return }
            do {
                // Tens of seconds of subprocesses: off the cooperative threads.
                try await BackgroundJob.run { () throws -> Void in
                    try initramfs.build(
                        release: kernel.release, package: build.package, kernel: kernel.kernel, output: output
                    ) { progress.note($0) }
                }
            } catch BisectError.stopped {
                // Interrupted: the bisector must not record this as a kernel that could not be tested.
                withUnsafeCurrentTask { $0?.cancel() }
                throw BisectError.stopped
            }
        }

        progress.note(
            "\(image): \(format.rawValue), \(bus.rawValue), \(accelerator.rawValue); "
                + "\(guest?.prettyName ?? "unknown OS"); root=\(root.withInitrd) (\(root.withoutInitrd) without an initrd)")
        for (index, kernel) in list.enumerated() {
            let mark = index == goodIndex ? "  good" : index == badIndex ? "  bad" : ""
            progress.note(
                String(format: "%3d  ", index) + "\(kernel.name)  \(kernel.release)  initrd: "
                    + (kernel.initrd.map { "\($0) (\(kernel.initrdSource))" } ?? kernel.initrdSource) + mark)
        }

        let bisector = KernelBisector(stateFile: statePath, recordEnds: !trustEnds) { kernel, index, attempt in
            await judge.judge(kernel, index: index, attempt: attempt)
        }
        let fresh = BisectState(image: path, kernels: list, good: goodIndex, bad: badIndex, retries: retries)
        let initial = try bisector.start(fresh, restart: restart)
        if initial.steps.isEmpty && (initial.endSteps ?? []).isEmpty {
            // A new bisection makes its initrds anew: the image may have changed since the last one.
            for kernel in list where kernel.initrdBuild != nil {
                if let initrd = kernel.initrd { try? FileManager.default.removeItem(atPath: initrd) }
            }
        }
        // What making initrds needs is checked once, now: its absence is not a verdict on any kernel.
        if list.contains(where: { $0.initrdBuild != nil && !FileManager.default.fileExists(atPath: $0.initrd ?? "") }) {
            try initramfs.preflight { progress.note($0) }
        }
        let total = KernelBisector.maximumSteps(kernels: badIndex - goodIndex + 1)
        let between = badIndex - goodIndex - 1
        progress.note(
            "bisecting \(between) kernel\(between == 1 ? "" : "s") between good and bad: "
                + "at most \(total) step\(total == 1 ? "" : "s")")
        let result = try await bisector.run(initial) { event in
            switch event {
            case .resumed(let steps):
                progress.note("resuming from \(statePath): \(steps) steps already done")
            case .booting(let index, let kernel, let attempt, let remaining):
                let retry = attempt > 1 ? " (attempt \(attempt))" : ""
                progress.note("booting [\(index)] \(kernel.name) (\(kernel.release))\(retry), at most \(remaining) more step\(remaining == 1 ? "" : "s")")
            case .booted(_, let kernel, let attempt):
                var line = String(format: "%6.1f s  ", attempt.seconds) + "\(kernel.name): \(attempt.verdict.rawValue)"
                if let stage = attempt.stageReached { line += ", reached \(stage)" }
                if let reason = attempt.reason { line += ": \(TerminalSafe.text(reason))" }
                progress.note(line)
            case .recordingEnd(let index, let kernel):
                let end = index == goodIndex ? "--good" : "--bad"
                progress.note("booting [\(index)] \(kernel.name) (\(end), not booted by the search) to record its transcript")
            case .stepDone(_, let lastGood, let firstBad):
                progress.note("now: last good \(lastGood.name), first bad \(firstBad.name)")
            }
        }
        report(result)
        return result
    }

    private func report(_ result: BisectResult) {
        var lines: [String] = []
        if result.possiblyFirstBad.count > 1 {
            lines.append("the first bad kernel is one of (those before the last could not be tested):")
            lines += result.possiblyFirstBad.map { "  \($0.name) (\($0.release))" }
        } else {
            let label = result.disagreements.isEmpty ? "first bad kernel" : "first bad kernel, unconfirmed"
            lines.append("\(label): \(result.firstBad.name) (\(result.firstBad.versionString))")
        }
        if let step = result.firstBadStep, let attempt = step.deciding {
            lines.append(
                attempt.verdict == .good
                    ? "  it booted when booted to record its transcript"
                    : "  it did not boot: \(attempt.reason ?? "?")")
        } else {
            lines.append("  (given with --bad, not booted in this bisection)")
        }
        lines.append("  transcript: \(result.firstBadTranscript ?? "none")")
        lines.append("last good kernel: \(result.lastGood.name) (\(result.lastGood.versionString))")
        lines.append("  transcript: \(result.lastGoodTranscript ?? "none (given with --good, not booted)")")
        for skipped in result.endSkips { lines.append("note: \(skipped)") }
        for disagreement in result.disagreements {
            lines.append("warning: \(disagreement): the result cannot be trusted (a flaky boot, or a wrong end?)")
        }
        lines.append(
            "\(result.steps) steps, \(result.boots) boots"
                + (result.endBoots > 0 ? " (+\(result.endBoots) to record the transcripts of the given ends)" : ""))
        if json {
            struct Summary: Encodable {
                var exact: Bool
                var firstBad: BisectKernel
                var lastGood: BisectKernel
                var possiblyFirstBad: [String]
                var firstBadTranscript: String?
                var lastGoodTranscript: String?
                var steps: Int
                var boots: Int
                var endBoots: Int
                var disagreements: [String]
                var endSkips: [String]
            }
            let summary = Summary(
                exact: result.isExact, firstBad: result.firstBad, lastGood: result.lastGood,
                possiblyFirstBad: result.possiblyFirstBad.map(\.name), firstBadTranscript: result.firstBadTranscript,
                lastGoodTranscript: result.lastGoodTranscript, steps: result.steps, boots: result.boots,
                endBoots: result.endBoots, disagreements: result.disagreements, endSkips: result.endSkips)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            if let data = try? encoder.encode(summary) {
                FileHandle.standardOutput.write(data + Data("\n".utf8))
            }
            FileHandle.standardError.write(Data((lines.joined(separator: "\n") + "\n").utf8))
        } else {
            FileHandle.standardOutput.write(Data((lines.joined(separator: "\n") + "\n").utf8))
        }
    }
}
