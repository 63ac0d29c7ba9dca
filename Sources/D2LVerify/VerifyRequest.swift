import D2LDiskModel
import D2LSupport
import Foundation

/// The machine a boot runs in, as asked for on the command line or in a scenario.
public struct MachineRequest: Sendable, Equatable {
    /// libvirt URI; nil for the default (`LibvirtHypervisor.defaultURI()`).
    public var connect: String?
    public var accelerator: Accelerator = .auto
    /// Guest memory in MiB (at least 64).
    public var memoryMiB: Int = 1024
    /// Guest CPUs (1-64).
    public var cpus: Int = 2
    public var diskBus: DiskBus = .virtio
    /// The guest's NIC: none, or one on QEMU's user-mode network.
    public var network: GuestNetwork = .none
    /// The storage pool a daemon on another host gets the disk in.
    public var storagePool = "default"

    public init() {}

    /// - Throws: `VerifyError.badOption` for memory or CPUs out of range.
    public func validate() throws(VerifyError) {
        guard memoryMiB >= 64 else { throw .badOption("--memory is in MiB and must be at least 64") }
        guard (1...64).contains(cpus) else { throw .badOption("--cpus must be between 1 and 64") }
    }
}

/// A command to run after login and, when given, a regular expression its output must match
/// (then its exit status is only reported).
public struct RunCheck: Sendable, Equatable {
    public var command: String
    public var expectOutput: String?

    public init(command: String, expectOutput: String? = nil) {
        self.command = command
        self.expectOutput = expectOutput
    }
}

/// Everything `d2l verify` is asked to do, before anything is booted.
public struct VerifyRequest: Sendable {
    /// The disk image to boot; with `replay`, only read for its facts (init system, OS), and optional.
    public var image: String?
    /// Judge this recorded console transcript instead of booting (`--replay`).
    public var replay: String?
    /// Direct kernel boot: an x86 bzImage, with an optional initrd and extra command line.
    public var kernel: String?
    public var initrd: String?
    public var append: String?
    public var machine = MachineRequest()
    /// Overall limit for the whole run, in seconds.
    public var timeout: Int = 600
    /// `--expect NAME=REGEX`, in order.
    public var expectations: [String] = []
    /// `--deadline NAME=SECONDS`, in order.
    public var deadlines: [String] = []
    public var failedUnits: FailedUnitsPolicy = .fail
    public var kernelWarnings: KernelWarningsPolicy = .warn
    /// The firmware to boot under, one boot each; nil: what the disk claims (a hybrid disk both ways).
    public var firmware: [Firmware]?
    /// Seconds failure patterns stay armed after the last stage.
    public var settle: Double = StagePlan.defaultSettle.seconds
    /// Seconds without console output before the last stage that fail the boot; 0: no limit.
    public var silence: Double = StagePlan.defaultSilence.seconds
    /// `--login USER[:PASSWORD]`.
    public var login: String?
    /// The commands to run after login, each with the output it must show, if any.
    public var commands: [RunCheck] = []

    public init(image: String?) { self.image = image }

    /// Checks everything that can be checked without the disk.
    ///
    /// - Throws: `VerifyError.badOption` naming the option.
    ///
    /// - Throws: `VerifyError.badOption` naming the option and what it needs.
    public func validate() throws(VerifyError) {
        try machine.validate()
        guard image != nil || replay != nil else { throw .badOption("give the disk image to boot, or --replay TRANSCRIPT") }
        guard replay == nil || kernel == nil else { throw .badOption("--replay judges a recorded console: it boots no --kernel") }
        guard kernel == nil || (firmware ?? [.bios]) == [.bios] else {
            throw .badOption("--kernel boots the kernel directly (QEMU loads it): no --firmware but bios")
        }
        guard settle >= 0, silence >= 0 else { throw .badOption("--settle and --silence are seconds, 0 or more") }
        _ = try plan(initSystem: .unknown)
        _ = try guestSession()
    }

    /// The stages and failure patterns for a guest with `initSystem`, booted with `directKernel` when given.
    ///
    /// - Throws: `VerifyError.badOption` for a bad --timeout, --expect, --deadline or option mix.
    public func plan(
        initSystem: InitSystem, osName: String? = nil, firmware: Firmware? = nil, loader: EFILoader? = nil,
        directKernel: KernelImage? = nil, emulated: Bool = false
    ) throws(VerifyError) -> StagePlan {
        guard timeout > 0 else { throw .badOption("--timeout must be positive") }
        guard kernel != nil || (initrd == nil && append == nil) else {
            throw .badOption(
                "--initrd and --append need --kernel: a disk's own command line is in its bootloader configuration")
        }
        var plan = StagePlan(
            stages: StagePlan.defaultStages(
                initSystem: initSystem, osName: osName, firmware: directKernel == nil ? firmware : nil, loader: loader),
            failures: StagePlan.defaultFailures(failedUnits: failedUnits, kernelWarnings: kernelWarnings),
            timeout: .seconds(timeout), silence: silence > 0 ? .milliseconds(Int64(silence * 1000)) : nil,
            settle: .milliseconds(Int64(settle * 1000)))
        if let directKernel { plan.bootDirectly(directKernel) }
        // Another architecture's guest is emulated instruction by instruction: the default deadlines
        // double (the firmware and kernel take about twice as long as an x86 guest's under TCG).
        if emulated { plan.allowForEmulation() }
        for expectation in expectations {
            let (name, value) = try Self.split(expectation, option: "--expect")
            plan.expect(name, try ConsolePattern(value))
        }
        for deadline in deadlines {
            let (name, value) = try Self.split(deadline, option: "--deadline")
            guard let seconds = Double(value), seconds > 0 else {
                throw .badOption("--deadline \(deadline): the deadline must be a number of seconds")
            }
            guard let index = plan.stages.firstIndex(where: { $0.name == name }) else {
                throw .badOption("--deadline \(deadline): no stage named \(name)")
            }
            plan.stages[index].deadline = .milliseconds(Int(seconds * 1000))
        }
        return plan
    }

    /// The login and the commands to run after it.
    ///
    /// - Throws: `VerifyError.badOption` for a malformed --login, --run without --login, or an
    ///   expected output that is not a regular expression.
    public func guestSession() throws(VerifyError) -> (login: LoginCredentials?, commands: [GuestCommand]) {
        var credentials: LoginCredentials?
        if let login {
            guard let parsed = LoginCredentials(login) else { throw .badOption("--login needs USER[:PASSWORD]") }
            credentials = parsed
        }
        guard commands.isEmpty || credentials != nil else {
            throw .badOption("--run needs --login: commands are typed into a logged-in shell")
        }
        var guestCommands: [GuestCommand] = []
        for check in commands {
            let expected = try check.expectOutput.map { (text) throws(VerifyError) in try ConsolePattern(text) }
            guestCommands.append(GuestCommand(command: check.command, expectOutput: expected))
        }
        return (credentials, guestCommands)
    }

    private static func split(_ text: String, option: String) throws(VerifyError) -> (String, String) {
        guard let equals = text.firstIndex(of: "="), equals != text.startIndex else {
            throw .badOption("\(option) \(text): expected NAME=VALUE")
        }
        return (String(text[..<equals]), String(text[text.index(after: equals)...]))
    }
}

/// What the verifier says while a request runs, besides the boot's own progress.
public enum VerifyNote: Sendable {
    /// A line for the log: the machine, the kernel, the command line, a warning.
    case note(String)
    case boot(VerifyProgress)
    /// Every boot's verdict, sent as soon as the last one is known, before that machine is torn down
    /// (a reader of the report need not wait for the teardown).
    case result(VerifyResult)
}

/// Runs a `VerifyRequest`: opens the disk once, prepares a direct kernel boot when asked, chooses the
/// accelerator and boots.
public enum DiskVerifier {
    /// Boots the request's disk and returns the verdict.
    ///
    /// - Throws: `VerifyError` (could not test: missing or unreadable image, kernel or initrd, bad
    ///   options), `DiskModelError` for a corrupt partition table, `LibvirtError` when libvirt fails.
    ///   A boot that fails is a report with `passed == false`, not an error.
    public static func run(
        _ request: VerifyRequest, transcript: (@Sendable (ConsoleRecording, Firmware?) -> Void)? = nil,
        notes: @escaping @Sendable (VerifyNote) -> Void
    ) async throws -> VerifyResult {
        let path = request.image.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        let disk = try path.map { (path) throws(DiskModelError) in try DiskImage.open(path) }
        let bzImage = try request.kernel.map { try KernelImage(path: URL(fileURLWithPath: $0).standardizedFileURL.path) }
        let (login, commands) = try request.guestSession()
        let initSystem = disk?.guest?.initSystem ?? .unknown
        let osName = disk?.guest?.prettyName
        if let replay = request.replay {
            let plan = try request.plan(initSystem: initSystem, osName: osName)
            let report = try await Self.replay(replay, disk: disk, plan: plan, login: login, commands: commands, notes: notes)
            return VerifyResult(boots: [report])
        }
        guard let path, let disk else { throw VerifyError.badOption("give the disk image to boot") }
        try await Self.refuseOverlay(disk)
        // A disk uploaded to another host's storage pool goes once its boots are over (RemoteUploads' policy).
        defer { RemoteUploads.shared.removeAll() }
        let bus = request.machine.diskBus
        var directBoot: DirectKernelBoot?
        if let bzImage {
            var initrdPath: String?
            if let initrd = request.initrd {
                let full = URL(fileURLWithPath: initrd).standardizedFileURL.path
                guard FileManager.default.isReadableFile(atPath: full) else {
                    throw VerifyError.unreadableImage(path: full, reason: "the --initrd cannot be read")
                }
                initrdPath = full
            }
            let root = disk.rootArgument(device: bus.devicePrefix, initrd: initrdPath != nil)
            directBoot = DirectKernelBoot(
                kernel: bzImage.path, initrd: initrdPath,
                commandLine: DirectKernelBoot.commandLine(root: root, extra: request.append, architecture: bzImage.architecture))
            notes(.note("kernel \(bzImage.versionString)"))
            notes(.note("initrd \(initrdPath ?? "none")"))
            notes(.note("command line \(directBoot?.commandLine ?? "")"))
        }
        // The firmware to prove: as asked, else what the disk claims (a direct kernel boot needs none).
        let setup = directBoot == nil ? await disk.bootSetup() : nil
        let architecture = try Self.architecture(disk: disk, setup: setup, kernel: bzImage)
        var firmware = request.firmware ?? setup?.claimedFirmware ?? []
        if !architecture.bootsUnderBIOS, directBoot == nil {
            if let refused = firmware.first(where: { $0 != .uefi }), request.firmware != nil {
                throw VerifyError.badOption("--firmware \(refused): \(architecture) disks boot under UEFI only (AAVMF)")
            }
            firmware = [.uefi]
        }
        if firmware.isEmpty || directBoot != nil { firmware = [.bios] }
        let emulated = architecture != .host
        if emulated, request.machine.accelerator == .kvm {
            throw VerifyError.badOption("--accel kvm: an \(architecture) guest on this \(Architecture.host) host can only be emulated (tcg)")
        }
        if request.firmware == nil, directBoot == nil {
            notes(.note("firmware: \(firmware.map(\.rawValue).joined(separator: " and ")), as the disk's boot partition claims "
                + (setup.map { "(syslinux: \($0.syslinux ? "yes" : "no"), EFI loader: \($0.efiLoader?.rawValue ?? "none"))" } ?? "")))
        }

        let hypervisor = try LibvirtHypervisor(
            uri: request.machine.connect ?? LibvirtHypervisor.defaultURI(), storagePool: request.machine.storagePool,
            note: { notes(.note($0)) })
        var spec = MachineSpec(
            diskPath: path, diskFormat: disk.format, accelerator: .tcg, memoryMiB: request.machine.memoryMiB,
            cpus: request.machine.cpus, diskBus: bus, directBoot: directBoot, firmware: firmware[0],
            network: request.machine.network, architecture: architecture)
        if let missing = spec.uefiFiles?.missing { throw VerifyError.badOption(missing) }
        let (accelerator, warning) = await AcceleratorProbe.shared.resolve(
            request.machine.accelerator, hypervisor: hypervisor, probe: spec)
        if let warning { notes(.note(warning)) }
        spec.accelerator = accelerator
        var about = "\(path): \(architecture), \(disk.format), \(bus.rawValue), \(accelerator.rawValue)"
        if emulated { about += " (\(architecture) emulated on \(Architecture.host), deadlines doubled)" }
        about += ", \(request.machine.memoryMiB) MiB, \(request.machine.cpus) CPUs"
        about += request.machine.network == .none ? ", no NIC" : ", a NIC on the user-mode network"
        if let guest = disk.guest {
            about += "; \(guest.prettyName ?? "unknown OS"), init \(guest.initSystem.rawValue)"
        } else {
            about += "; root file system not readable, any init accepted"
        }
        notes(.note(about))

        var reports: [BootReport] = []
        for (index, one) in firmware.enumerated() {
            let earlier = reports
            let isLast = index == firmware.count - 1
            let plan = try request.plan(
                initSystem: initSystem, osName: osName, firmware: one, loader: setup?.efiLoader, directKernel: bzImage,
                emulated: emulated)
            spec.firmware = one
            spec.name = MachineSpec.uniqueName()
            if firmware.count > 1 { notes(.note("booting under \(one)")) }
            let verifier = BootVerifier(
                hypervisor: hypervisor, options: VerifyOptions(plan: plan, login: login, commands: commands))
            let report = try await verifier.verify(
                spec, guest: disk.guest, transcript: transcript.map { write in { write($0, firmware.count > 1 ? one : nil) } }
            ) { event in
                notes(.boot(event))
                if isLast, case .verdict(let last) = event { notes(.result(VerifyResult(boots: earlier + [last]))) }
            }
            reports.append(report)
        }
        return VerifyResult(boots: reports)
    }

    /// Refuses an overlay image: d2l hands QEMU the image alone (its backing chain cut after it), so
    /// a qcow2 over a base image would boot as if the base were empty.
    ///
    /// - Throws: `VerifyError.unreadableImage` naming the backing file and how to flatten the image.
    public static func refuseOverlay(_ disk: DiskImage) async throws(VerifyError) {
        guard let backing = await disk.backingFile() else { return }
        throw .unreadableImage(
            path: disk.path,
            reason: "a \(disk.format) overlay of \(backing): d2l boots a disk by itself, without a backing chain; "
                + "flatten it first (qemu-img convert -O \(disk.format.qemuFormat) \(disk.path) FLAT)")
    }

    /// The architecture to boot the disk as: the `--kernel`'s, else what the disk says (its init's ELF
    /// header, its EFI loader's removable-media name, its GPT root partition type), else amd64.
    ///
    /// - Throws: `VerifyError.badOption` when the kernel's architecture is not the userland's.
    public static func architecture(disk: DiskImage, setup: BootSetup?, kernel: KernelImage?) throws(VerifyError) -> Architecture {
        let rootType = disk.table?.partition(.root)?.type
        let fromDisk = disk.guest?.architecture ?? setup?.efiArchitecture
            ?? Architecture.allCases.first { rootType == .linuxRoot($0) }
        if let kernel, let fromDisk, kernel.architecture != fromDisk {
            throw .badOption(
                "--kernel \(kernel.path) is an \(kernel.architecture) kernel and the disk's userland is \(fromDisk): give a kernel of the disk's architecture")
        }
        return kernel?.architecture ?? fromDisk ?? .amd64
    }

    /// Judges a recorded transcript with the same stages, deadlines (on the transcript's own time),
    /// reports and exit codes as a boot, and no VM.
    static func replay(
        _ file: String, disk: DiskImage?, plan: StagePlan, login: LoginCredentials?, commands: [GuestCommand],
        notes: @escaping @Sendable (VerifyNote) -> Void
    ) async throws -> BootReport {
        let transcript = try TimedTranscript.load(path: file)
        let timed = FileManager.default.fileExists(atPath: file + ".timing")
        notes(.note("replaying \(file): \(transcript.bytes.count) bytes, "
            + (timed ? "timed by \(file).timing" : "timed by its printk timestamps and 115200 baud")))
        // The log's end is the guest's, a moment after its last byte: after the longest quiet any check
        // waits for (a prompt staying last, the settle time, the silence budget).
        // A log that ends in a power-off or reset ends there, as QEMU does.
        var text = ConsoleText()
        let lastLines = text.append(transcript.bytes.suffix(4096)).suffix(5).map(\.text)
        let endDelay = StageMachine.explainedEnding(lastLines) != nil
            ? .milliseconds(200) : max(plan.settle + plan.promptQuiet, plan.silence ?? .zero) + .seconds(1)
        let hypervisor = ReplayHypervisor(transcript: transcript, closeAtEnd: true, endDelay: endDelay)
        var options = VerifyOptions(plan: plan, login: login, commands: commands)
        options.endOfConsole = "the transcript ended before it"
        let verifier = BootVerifier(hypervisor: hypervisor, options: options)
        return try await verifier.verify(
            MachineSpec(diskPath: disk?.path ?? file, diskFormat: disk?.format ?? .raw), guest: disk?.guest,
            progress: { notes(.boot($0)) })
    }
}
