import ArgumentParser
import D2LSupport
import D2LVerify
import Foundation

/// `d2l verify`: boot a disk in a throwaway VM and judge its serial console stage by stage.
struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Boot a disk image and check, stage by stage, that it really boots.",
        discussion: """
            The disk boots in a transient libvirt domain (by default libvirt's embedded QEMU \
            driver inside this process, no daemon needed) with its writes going to a throwaway \
            overlay, so the image is never changed. The serial console must show, in order and \
            each within its deadline: bootloader, kernel, init (chosen from the image's \
            /etc/os-release and /sbin/init) and login. A kernel panic, emergency mode, an \
            initramfs shell or a failed systemd unit ends the run at once.

            With --kernel the disk's root file system boots with an outside kernel (libvirt's \
            direct kernel boot): no bootloader runs, and the kernel stage passes only on the \
            `Linux version` line of that very bzImage, so a stale kernel cannot pass. \
            This makes `git bisect run d2l verify IMAGE --kernel arch/x86/boot/bzImage` work: \
            a kernel that does not boot is bad, and anything that is not a verdict on the \
            kernel (no bzImage, unreadable file, libvirt error) is skipped.

            EXIT STATUS
              0    the disk booted (and every --run command passed)
              1    the disk did not boot: the report names the stage and the reason
              125  could not test: libvirt or QEMU error, missing or unreadable image or \
            kernel, bad options (git bisect run skips the commit)
            """)

    @Argument(help: "The disk image to boot (raw, qcow2, vmdk, vdi, vhdx or vpc).")
    var image: String

    // Expanded before parsing (ScenarioArguments); declared so that --help lists it.
    @Option(help: "A scenario file (YAML, see README) whose verify section gives the defaults; options given here win.")
    var scenario: String?

    @Option(help: "Boot this x86 bzImage directly instead of the disk's bootloader (direct kernel boot).")
    var kernel: String?

    @Option(help: "With --kernel: the initrd to load with it (none by default).")
    var initrd: String?

    @Option(
        name: .customLong("append"),
        help: "With --kernel: more kernel command line after root=<the disk's root> ro (the consoles come last).")
    var appendArguments: String?

    @OptionGroup(title: "Machine")
    var machine: MachineOptions

    @Option(help: "Overall limit in seconds for the whole run.")
    var timeout: Int = 600

    @Option(
        name: .customLong("expect"),
        help: ArgumentHelp(
            "NAME=REGEX: replace the pattern of stage NAME (bootloader, kernel, init, login) or add a stage.",
            valueName: "name=regex"))
    var expectations: [String] = []

    @Option(
        name: .customLong("deadline"),
        help: ArgumentHelp("NAME=SECONDS: the deadline of a stage, counted from the previous one.", valueName: "name=seconds"))
    var deadlines: [String] = []

    @Option(help: "What a systemd [FAILED] line does: fail or warn.")
    var failedUnits: String = "fail"

    @Option(help: "After the login prompt, log in as USER or USER:PASSWORD.")
    var login: String?

    @Option(name: .customLong("run"), help: "With --login: a shell command to run; repeatable. Must exit 0.")
    var commands: [String] = []

    @Option(
        name: .customLong("expect-output"),
        help: "A regex the output of the --run command with the same position must match (then its exit status is only reported).")
    var expectedOutputs: [String] = []

    @Option(help: "Write the raw console bytes to this file.")
    var transcript: String?

    @Option(help: "Write a JUnit XML report (one test case per stage) to this file.")
    var junit: String?

    @Flag(help: "Print the report as JSON on stdout.")
    var json = false

    init() {}

    private struct Settings {
        var accelerator: Accelerator
        var bus: DiskBus
        var plan: StagePlan
        var commands: [GuestCommand]
        var login: LoginCredentials?
    }

    /// Checks options; problems exit with 125 ("could not test"), not the usual 64.
    func validate() throws {
        do {
            _ = try settings(initSystem: .unknown)
        } catch {
            FileHandle.standardError.write(Data("Error: \(error)\n".utf8))
            throw ExitCode(125)
        }
    }

    private func settings(initSystem: InitSystem, kernel bzImage: KernelImage? = nil) throws -> Settings {
        let (accelerator, bus) = try machine.checked()
        guard timeout > 0 else { throw VerifyError.badOption("--timeout must be positive") }
        guard failedUnits == "fail" || failedUnits == "warn" else {
            throw VerifyError.badOption("--failed-units must be fail or warn")
        }
        guard kernel != nil || (initrd == nil && appendArguments == nil) else {
            throw VerifyError.badOption(
                "--initrd and --append need --kernel: a disk's own command line is in its bootloader configuration")
        }
        var plan = StagePlan(
            stages: StagePlan.defaultStages(initSystem: initSystem),
            failures: StagePlan.defaultFailures(failedUnitsWarnOnly: failedUnits == "warn"),
            timeout: .seconds(timeout))
        if let bzImage { plan.bootDirectly(bzImage) }
        for expectation in expectations {
            let (name, value) = try Self.split(expectation, option: "--expect")
            plan.expect(name, try ConsolePattern(value))
        }
        for deadline in deadlines {
            let (name, value) = try Self.split(deadline, option: "--deadline")
            guard let seconds = Double(value), seconds > 0 else {
                throw VerifyError.badOption("--deadline \(deadline): the deadline must be a number of seconds")
            }
            guard let index = plan.stages.firstIndex(where: { $0.name == name }) else {
                throw VerifyError.badOption("--deadline \(deadline): no stage named \(name)")
            }
            plan.stages[index].deadline = .milliseconds(Int(seconds * 1000))
        }
        var credentials: LoginCredentials?
        if let login {
            guard let parsed = LoginCredentials(login) else { throw VerifyError.badOption("--login needs USER[:PASSWORD]") }
            credentials = parsed
        }
        guard commands.isEmpty || credentials != nil else {
            throw VerifyError.badOption("--run needs --login: commands are typed into a logged-in shell")
        }
        guard expectedOutputs.count <= commands.count else {
            throw VerifyError.badOption("each --expect-output belongs to a --run; there are more of them than commands")
        }
        var guestCommands: [GuestCommand] = []
        for (index, command) in commands.enumerated() {
            let expected = index < expectedOutputs.count ? try ConsolePattern(expectedOutputs[index]) : nil
            guestCommands.append(GuestCommand(command: command, expectOutput: expected))
        }
        return Settings(accelerator: accelerator, bus: bus, plan: plan, commands: guestCommands, login: credentials)
    }

    private static func split(_ text: String, option: String) throws -> (String, String) {
        guard let equals = text.firstIndex(of: "="), equals != text.startIndex else {
            throw VerifyError.badOption("\(option) \(text): expected NAME=VALUE")
        }
        return (String(text[..<equals]), String(text[text.index(after: equals)...]))
    }

    func run() async throws {
        Cleanup.shared.installSignalHandlers()
        let report: BootReport
        do {
            report = try await verify()
        } catch let error as ExitCode {
            throw error
        } catch {
            FileHandle.standardError.write(Data("d2l verify: could not test: \(error)\n".utf8))
            throw ExitCode(125)
        }
        if !report.passed { throw ExitCode(1) }
    }

    private func verify() async throws -> BootReport {
        let path = URL(fileURLWithPath: image).standardizedFileURL.path
        guard FileManager.default.fileExists(atPath: path) else { throw VerifyError.missingImage(path: path) }
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw VerifyError.unreadableImage(path: path, reason: "not readable")
        }
        let format = try DiskFormat.detect(path: path)
        let guest = GuestInspector.inspect(path: path, format: format)
        let bzImage = try kernel.map { try KernelImage(path: URL(fileURLWithPath: $0).standardizedFileURL.path) }
        let settings = try settings(initSystem: guest?.initSystem ?? .unknown, kernel: bzImage)
        let progress = ProgressReporter()
        var directBoot: DirectKernelBoot?
        if let bzImage {
            var initrdPath: String?
            if let initrd {
                let full = URL(fileURLWithPath: initrd).standardizedFileURL.path
                guard FileManager.default.isReadableFile(atPath: full) else {
                    throw VerifyError.unreadableImage(path: full, reason: "the --initrd cannot be read")
                }
                initrdPath = full
            }
            let root = GuestInspector.rootDevice(path: path, format: format, bus: settings.bus, initrd: initrdPath != nil)
            directBoot = DirectKernelBoot(
                kernel: bzImage.path, initrd: initrdPath,
                commandLine: DirectKernelBoot.commandLine(root: root, extra: appendArguments))
            progress.note("kernel \(bzImage.versionString)")
            progress.note("initrd \(initrdPath ?? "none")")
            progress.note("command line \(directBoot?.commandLine ?? "")")
        }

        let hypervisor = try LibvirtHypervisor(uri: machine.connect ?? LibvirtHypervisor.defaultURI())
        var spec = MachineSpec(
            diskPath: path, diskFormat: format, accelerator: .tcg, memoryMiB: machine.memory, cpus: machine.cpus,
            diskBus: settings.bus, directBoot: directBoot)
        let (accelerator, warning) = await AcceleratorProbe.shared.resolve(
            settings.accelerator, hypervisor: hypervisor, probe: spec)
        if let warning { progress.note(warning) }
        spec.accelerator = accelerator
        var about = "\(image): \(format.rawValue), \(settings.bus.rawValue), \(accelerator.rawValue)"
        about += ", \(machine.memory) MiB, \(machine.cpus) CPUs"
        if let guest {
            about += "; \(guest.prettyName ?? "unknown OS"), init \(guest.initSystem.rawValue)"
        } else {
            about += "; root file system not readable, any init accepted"
        }
        progress.note(about)

        let verifier = BootVerifier(
            hypervisor: hypervisor,
            options: VerifyOptions(plan: settings.plan, login: settings.login, commands: settings.commands))
        let transcriptPath = transcript
        return try await verifier.verify(
            spec, guest: guest,
            transcript: { bytes in
                if let transcriptPath { _ = FileManager.default.createFile(atPath: transcriptPath, contents: Data(bytes)) }
            },
            progress: { event in
                switch event {
                case .poweredOn:
                    progress.note("powered on")
                case .stageReached(let name, let seconds, let detail):
                    let time = String(format: "%6.1f s", seconds)
                    progress.note("\(time)  \(name.padding(toLength: 10, withPad: " ", startingAt: 0))  \(TerminalSafe.text(String(detail.prefix(100))))")
                case .warning(let text):
                    progress.note("warning: \(TerminalSafe.text(text))")
                case .commandFinished(let result):
                    let status = result.exitStatus.map(String.init) ?? "?"
                    progress.note("ran '\(result.command)': exit \(status), \(result.passed ? "ok" : "FAILED")")
                    if !result.output.isEmpty {
                        progress.note(TerminalSafe.text(result.output.split(separator: "\n").suffix(10).joined(separator: "\n")))
                    }
                case .poweredOff(let seconds):
                    progress.note(String(format: "%6.1f s  powered off cleanly", seconds))
                case .verdict(let report):
                    // Reported before the machine is torn down, which takes a moment.
                    do { try write(report) } catch { progress.note("warning: \(error)") }
                }
            })
    }

    private func write(_ report: BootReport) throws {
        if let junit {
            try report.junit().write(toFile: junit, atomically: true, encoding: .utf8)
        }
        // Straight to the file descriptor: the process may wait on the teardown before it exits.
        if json {
            FileHandle.standardOutput.write(Data((try report.json() + "\n").utf8))
            FileHandle.standardError.write(Data((report.summary() + "\n").utf8))
        } else {
            FileHandle.standardOutput.write(Data((report.summary() + "\n").utf8))
        }
    }
}
