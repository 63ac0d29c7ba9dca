import ArgumentParser
import D2LDisk
import D2LDiskModel
import D2LImage
import D2LSupport
import Foundation

/// `d2l inspect`: what the builder sees in an image, and why it would not boot.
struct InspectCommand: PolicedCommand {
    static let exitPolicy = ExitPolicy.builder

    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show what the builder sees in a container image: format, layers, distro, kernel, init.",
        discussion: "Exits 0 when the image could boot, 1 when it could not (the reasons are listed).")

    @Argument(help: "The container image (as for d2l build).")
    var input: String

    @Option(
        help: ArgumentHelp(
            "The platform to build for: os/arch[/variant], linux/amd64 or linux/arm64.",
            discussion: "Taken from a multi-platform image (default: this host's, linux/\(Architecture.host)); "
                + "a single image must be of that platform (default: whatever it is)."),
        transform: Platform.argument)
    var platform: Platform?

    @Option(name: .customLong("init"), help: "The init to check for, when not /sbin/init.")
    var initPath: String?

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        // The scratch folder (and a podman save's archive) go on Ctrl-C, and after a SIGKILL too.
        Cleanup.shared.installSignalHandlers()
        Cleanup.shared.startReaper()
        let image = try await ImageReader.open(input, asking: platform)
        defer { image.removeOwnedFiles() }
        let report = try ImageInspection.inspect(image, initOverride: initPath)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print("input:    \(report.input) (\(report.format))")
            if let d = report.digest { print("digest:   \(d)") }
            print("arch:     \(report.architecture ?? "not stated")")
            print("layers:   \(report.layers.count)")
            for l in report.layers { print("  - \(l)") }
            print("distro:   \(report.distro.isEmpty ? "unknown (no os-release)" : report.distro)")
            print("kernel:   \(report.kernel.map { "\($0) (\(report.kernelPath ?? ""))" } ?? "none")")
            print("initrd:   \(report.initrdPath ?? "none")")
            print("init:     \(report.initPath ?? "none") (\(report.initSystem))")
            print("content:  \(report.files) files, \(report.directories) directories, \(ProgressReporter.format(report.contentBytes))")
            for mode in report.bootModes {
                print("boot:     \(mode.mode.padding(toLength: 12, withPad: " ", startingAt: 0))"
                    + (mode.supported ? "yes" : "no: " + mode.problems.joined(separator: "; ")))
            }
            if let service = report.containerService {
                print("service:  \(ContainerService.name) runs \(service.summary)")
            } else {
                print("service:  none (\(report.containerServiceNote ?? "no command"))")
            }
            for w in report.warnings.prefix(20) { print("warning:  \(w)") }
            if report.canBoot {
                print("verdict:  can boot")
            } else {
                print("verdict:  cannot boot")
                for p in report.problems { print("  - \(p)") }
            }
        }
        if !report.canBoot { throw Reported(category: .failed) }
    }
}
