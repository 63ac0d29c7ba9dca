import ArgumentParser
import D2LDiskModel
import D2LScenario
import D2LSupport
import D2LVerify
import Foundation
import Synchronization

/// `d2l verify`: boot a disk in a throwaway VM and judge its serial console stage by stage.
struct VerifyCommand: PolicedCommand {
    static let exitPolicy = ExitPolicy.verdict

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

    @Argument(help: "The disk image to boot (raw, qcow2, vmdk, vdi, vhdx or vpc); with --replay, optional (read for its init system).")
    var image: String?

    @Option(
        help: ArgumentHelp(
            "Judge this recorded serial console log instead of booting: same stages, deadlines on the log's own time (FILE.timing when there is one, else its printk timestamps), reports and exit codes.",
            valueName: "file"))
    var replay: String?

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

    @Option(
        help: ArgumentHelp(
            "Firmware to boot under, one boot each: bios, uefi, uefi-secure or all (repeatable; default: what the disk's boot partition claims, so a hybrid disk boots twice).",
            valueName: "firmware"))
    var firmware: [String] = []

    @Option(help: "Overall limit in seconds for the whole run (default: 600).")
    var timeout: Int?

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

    @Option(help: "What a systemd [FAILED] line does (default: fail).")
    var failedUnits: FailedUnitsPolicy?

    @Option(help: "What a kernel WARNING, Oops, BUG, soft lockup, RCU stall or hung task does (default: warn).")
    var kernelWarnings: KernelWarningsPolicy?

    @Option(help: "Seconds failure patterns stay armed after the last stage, so a crash right after the prompt fails the boot (default: 8).")
    var settle: Double?

    @Option(help: "Seconds without console output, before the last stage, that fail the boot; 0 for no limit (default: 180).")
    var silence: Double?

    @Option(help: "After the login prompt, log in as USER or USER:PASSWORD.")
    var login: String?

    @Option(name: .customLong("run"), help: "With --login: a shell command to run; repeatable. Must exit 0.")
    var commands: [String] = []

    @Option(
        name: .customLong("expect-output"),
        help: "A regex the output of the --run command with the same position must match (then its exit status is only reported).")
    var expectedOutputs: [String] = []

    @Option(help: "Write the raw console bytes to this file, and their timing to FILE.timing (for --replay).")
    var transcript: String?

    @Option(help: "Write a JUnit XML report (one test case per stage) to this file.")
    var junit: String?

    @Flag(help: "Print the report as JSON on stdout.")
    var json = false

    init() {}

    /// The request: defaults, then the scenario's verify section, then the options given here.
    ///
    /// - Throws: `VerifyError.badOption` for a scenario file that cannot be used or more
    ///   --expect-output than --run.
    func request() throws -> VerifyRequest {
        var request = VerifyRequest(image: image)
        request.replay = replay
        if !firmware.isEmpty {
            var chosen: [Firmware] = []
            for name in firmware {
                if name == "all" {
                    chosen += Firmware.allCases
                } else if let one = Firmware(rawValue: name) {
                    chosen.append(one)
                } else {
                    throw VerifyError.badOption("--firmware \(name): give bios, uefi, uefi-secure or all")
                }
            }
            request.firmware = chosen.reduce(into: []) { if !$0.contains($1) { $0.append($1) } }
        }
        if let scenario {
            do {
                try ScenarioParser.parse(file: scenario, imagesDirectory: nil).verify.apply(to: &request)
            } catch {
                throw VerifyError.badOption("--scenario: \(error)")
            }
        }
        request.kernel = kernel
        request.initrd = initrd
        request.append = appendArguments
        machine.apply(to: &request.machine)
        if let timeout { request.timeout = timeout }
        request.expectations += expectations
        request.deadlines += deadlines
        if let failedUnits { request.failedUnits = failedUnits }
        if let kernelWarnings { request.kernelWarnings = kernelWarnings }
        if let settle { request.settle = settle }
        if let silence { request.silence = silence }
        if let login { request.login = login }
        // The N-th --expect-output goes with the N-th --run: only when every --run has one (or none has)
        // can that pairing not shift.
        guard expectedOutputs.isEmpty || expectedOutputs.count == commands.count else {
            throw VerifyError.badOption(
                "give every --run its --expect-output, in order, or none: \(commands.count) --run and "
                    + "\(expectedOutputs.count) --expect-output cannot be paired (a scenario file pairs them one by one)")
        }
        request.commands += commands.enumerated().map { index, command in
            RunCheck(command: command, expectOutput: index < expectedOutputs.count ? expectedOutputs[index] : nil)
        }
        return request
    }

    func validate() throws {
        try usageErrors { try request().validate() }
    }

    func run() async throws {
        Cleanup.shared.installSignalHandlers()
        // After a SIGKILL, the reaper kills the embedded driver's QEMU and removes the boot's scratch files.
        Cleanup.shared.startReaper()
        let progress = ProgressReporter()
        let transcriptPath = transcript
        // The report goes out with the last verdict, before that machine is torn down; once.
        let written = ReportOnce()
        let result = try await DiskVerifier.run(
            try request(),
            transcript: { recording, firmware in
                // One transcript per boot: FILE, or FILE.<firmware> when the disk boots more than once.
                if let transcriptPath { recording.write(to: transcriptPath + (firmware.map { ".\($0)" } ?? "")) }
            },
            notes: { note in
                switch note {
                case .note(let text): progress.note(text)
                case .boot(let event): show(event, progress: progress)
                case .result(let result):
                    written.state.withLock { state in
                        guard !state.done else { return }
                        state.done = true
                        do { try write(result) } catch { state.error = error }
                    }
                }
            })
        let (done, error) = written.state.withLock { ($0.done, $0.error) }
        if let error { throw error }
        if !done { try write(result) }
        switch result.outcome {
        case .passed: return
        case .failed: throw Reported(category: .failed)
        case .couldNotTest: throw Reported(category: .couldNotTest)
        }
    }

    private func show(_ event: VerifyProgress, progress: ProgressReporter) {
        switch event {
        case .poweredOn:
            progress.note("powered on")
        case .stageReached(let name, let seconds, let detail):
            let time = String(format: "%6.1f s", seconds)
            progress.note("\(time)  \(name.padding(toLength: 10, withPad: " ", startingAt: 0))  \(TerminalSafe.text(String(detail.prefix(100))))")
        case .stageNotSeen(let name, let seconds):
            let time = String(format: "%6.1f s", seconds)
            progress.note("\(time)  \(name.padding(toLength: 10, withPad: " ", startingAt: 0))  (not seen on the console)")
        case .warning(let warning):
            progress.note("warning: \(TerminalSafe.text(warning.summary))")
            for line in warning.lines.dropFirst().prefix(20) { progress.note("  | \(TerminalSafe.text(line))") }
            if warning.lines.count > 21 { progress.note("  | (\(warning.lines.count - 21) more lines in the report)") }
        case .nudged(let seconds):
            progress.note(String(format: "%6.1f s  sent a newline: getty should print its prompt again", seconds))
        case .commandFinished(let result):
            let status = result.exitStatus.map(String.init) ?? "?"
            progress.note("ran '\(result.command)': exit \(status), \(result.passed ? "ok" : "FAILED")")
            let lines = result.output.split(separator: "\n", omittingEmptySubsequences: false)
            if lines.count > 10 { progress.note("(output cut: \(lines.count - 10) earlier lines not shown; the JSON report has them)") }
            if !result.output.isEmpty { progress.note(TerminalSafe.text(lines.suffix(10).joined(separator: "\n"))) }
        case .poweredOff(let seconds):
            progress.note(String(format: "%6.1f s  powered off cleanly", seconds))
        case .verdict(let report):
            // Each boot's summary goes out before its machine is torn down, which takes a moment.
            let stream = json ? FileHandle.standardError : FileHandle.standardOutput
            stream.write(Data((report.summary() + "\n").utf8))
        }
    }

    private func write(_ result: VerifyResult) throws {
        if let junit {
            try result.junit().write(toFile: junit, atomically: true, encoding: .utf8)
        }
        if json {
            FileHandle.standardOutput.write(Data((try result.json() + "\n").utf8))
        } else if result.boots.count > 1 {
            let verdicts = result.boots.map { "\($0.firmware ?? "?"): \($0.verdict)" }.joined(separator: ", ")
            FileHandle.standardOutput.write(Data("\(result.passed ? "booted" : "did not boot") (\(verdicts))\n".utf8))
        }
    }
}

/// Whether `d2l verify` has written its report yet, and what writing it threw.
private final class ReportOnce: Sendable {
    let state = Mutex<(done: Bool, error: (any Error)?)>((false, nil))
}
