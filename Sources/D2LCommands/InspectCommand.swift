import ArgumentParser
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
        help: "Platform to take from a multi-platform image: os/arch[/variant] (default: linux/amd64).",
        transform: Platform.argument)
    var platform: Platform = Architecture.amd64.platform

    @Option(name: .customLong("init"), help: "The init to check for, when not /sbin/init.")
    var initPath: String?

    @Flag(help: "Print JSON.")
    var json = false

    struct Report: Codable {
        var input: String
        var format: String
        var digest: String?
        var architecture: String?
        var layers: [String]
        var distro: String
        var kernel: String?
        var kernelPath: String?
        var initrdPath: String?
        var initPath: String?
        var initSystem: String
        var files: Int
        var directories: Int
        var contentBytes: UInt64
        var problems: [String]
        var warnings: [String]
        var canBoot: Bool
    }

    func run() async throws {
        let report: Report
        do {
            let image = try await ImageReader.open(input, platform: platform)
            defer { image.removeOwnedFiles() }
            let tree = try LayerFlattener(capturePaths: BootFacts.capturePaths, headNames: BootFacts.headNames)
                .scan(image.layers)
            let facts = BootFacts.examine(tree, architecture: image.architecture, initOverride: initPath)
            report = Report(
                input: image.path, format: image.format.rawValue, digest: image.digest.map { "sha256:" + $0 },
                architecture: image.architecture,
                layers: image.layers.map { "\($0.description) (\(ProgressReporter.format(UInt64(max(0, $0.size)))))" },
                distro: facts.distro, kernel: facts.kernel?.version.text, kernelPath: facts.kernel.map { $0.kernelPath.display },
                initrdPath: facts.kernel?.initrdPath?.display, initPath: facts.initResolved?.display,
                initSystem: facts.initSystem.rawValue, files: tree.stats.regularFiles,
                directories: tree.stats.directories, contentBytes: tree.stats.dataBytes, problems: facts.problems,
                warnings: tree.warnings, canBoot: facts.problems.isEmpty)
        }
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
