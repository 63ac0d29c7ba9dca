import D2LDiskModel
import D2LImage
import D2LSupport
import Foundation

/// What the builder sees in an image and every reason it would not boot: `d2l inspect`.
public struct ImageInspection: Codable, Sendable {
    /// One firmware mode and why the image cannot boot in it (empty: it can).
    public struct BootModeSupport: Codable, Sendable {
        public var mode: String
        public var problems: [String]
        public var supported: Bool { problems.isEmpty }
    }

    public var input: String
    public var format: String
    public var digest: String?
    public var architecture: String?
    public var layers: [String]
    public var distro: String
    public var kernel: String?
    public var kernelPath: String?
    public var initrdPath: String?
    public var initPath: String?
    public var initSystem: String
    public var files: Int
    public var directories: Int
    public var contentBytes: UInt64
    public var problems: [String]
    public var warnings: [String]
    /// bios, uefi and uefi-secure, each with what stands in its way.
    public var bootModes: [BootModeSupport]
    public var canBoot: Bool
    /// The image config's command as the service `d2l build` makes of it (`d2l-container`), or nil.
    public var containerService: ContainerService?
    /// Why there is no container service (no command, only a shell, an init without services, ...).
    public var containerServiceNote: String?

    /// Scans `image` as `d2l build` would (its /boot and EFI loaders saved to a scratch folder that is
    /// removed after) and reports what it found.
    ///
    /// - Throws: `ImageError` when a layer cannot be read.
    public static func inspect(_ image: ContainerImage, initOverride: String?) throws -> ImageInspection {
        let scratch = NSTemporaryDirectory() + "d2l-inspect-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        Cleanup.shared.add(scratch)
        defer {
            try? FileManager.default.removeItem(atPath: scratch)
            Cleanup.shared.remove(scratch)
        }
        let tree: FileTree
        do {
            tree = try LayerFlattener(
                capturePaths: BootFacts.capturePaths, headNames: BootFacts.headNames, captureNames: BootFacts.captureNames,
                capturePrefixes: BootLoaders.capturePrefixes, captureDirectory: scratch
            ).scan(image.layers)
        } catch {
            // A damaged blob explains a layer libarchive cannot read: say that, as build does.
            try LayerDigests(image.layers).wait()
            throw error
        }
        let facts = BootFacts.examine(tree, architecture: image.architecture, initOverride: initOverride)
        let kernelFile = facts.kernel.flatMap { BootLoaders.imageFile($0.kernelPath.display, in: tree) }
        let modes = BootLoaders.supportedModes(
            tree: tree, kernelFile: kernelFile, architecture: facts.bootArchitecture ?? .amd64
        ).map {
            BootModeSupport(mode: $0.mode, problems: $0.problems)
        }
        var warnings = tree.warnings
        if let kernel = facts.kernel, let initrd = kernel.initrdPath,
            let initrdFile = BootLoaders.imageFile(initrd.display, in: tree),
            let warning = InitrdDriverCheck.warning(
                initrdFile: initrdFile, initrdName: initrd.display, kernel: kernel.version.text, tree: tree)
        {
            warnings.append(warning)
        }
        var service: ContainerService?
        var serviceNote: String?
        switch ContainerService.decide(
            image.config, initSystem: facts.initSystem, enabled: true, image: ImageEditor(tree: tree, mtime: 0))
        {
        case .service(let s): service = s
        case .none(let why), .problem(let why): serviceNote = why
        }
        return ImageInspection(
            input: image.path, format: image.format.rawValue, digest: image.digest.map { "sha256:" + $0 },
            architecture: image.architecture,
            layers: image.layers.map { "\($0.description) (\(ProgressReporter.format(UInt64(max(0, $0.size)))))" },
            distro: facts.distro, kernel: facts.kernel?.version.text, kernelPath: facts.kernel.map { $0.kernelPath.display },
            initrdPath: facts.kernel?.initrdPath?.display, initPath: facts.initResolved?.display,
            initSystem: facts.initSystem.rawValue, files: tree.stats.regularFiles,
            directories: tree.stats.directories, contentBytes: tree.stats.dataBytes, problems: facts.problems,
            warnings: warnings, bootModes: modes, canBoot: facts.problems.isEmpty && modes.contains(where: \.supported),
            containerService: service, containerServiceNote: serviceNote)
    }
}
