import ArgumentParser
import D2LBisect
import D2LSupport
import D2LVerify
import Foundation

/// `d2l bisect`: binary-search an ordered list of kernels for the first that does not boot a disk's root.
struct BisectCommand: PolicedCommand {
    static let exitPolicy = ExitPolicy.verdict

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
    var order: BisectOrder = .version

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

    /// The request the options describe.
    func request() -> BisectRequest {
        var request = BisectRequest(image: image, good: good, bad: bad)
        request.kernels = kernels
        request.kernelDirectory = kernelDirectory
        request.order = order
        request.initrd = initrd
        request.noInitrd = noInitrd
        request.makeInitrd = makeInitrd
        request.trustEnds = trustEnds
        request.append = appendArguments
        request.retries = retries
        request.state = state
        request.restart = restart
        machine.apply(to: &request.machine)
        request.timeout = timeout
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
        let request = request()
        let statePath = URL(fileURLWithPath: request.state).standardizedFileURL.path
        let result = try await BisectSession.run(request, note: { progress.note($0) }) { event in
            Self.show(event, statePath: statePath, progress: progress)
        }
        report(result)
        if !result.isExact { throw Reported(category: .failed) }
    }

    private static func show(_ event: BisectProgress, statePath: String, progress: ProgressReporter) {
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
        case .recordingEnd(let index, let kernel, let end):
            progress.note("booting [\(index)] \(kernel.name) (\(end), not booted by the search) to record its transcript")
        case .stepDone(_, let lastGood, let firstBad):
            progress.note("now: last good \(lastGood.name), first bad \(firstBad.name)")
        }
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
