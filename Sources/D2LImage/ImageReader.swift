import D2LDiskModel
import D2LSupport
import Foundation

/// Recognises an input by its content and lists its layers.
public enum ImageReader {
    /// Opens `input`: a path, or `docker:NAME` / `podman:NAME` for an engine's image (saved with
    /// `ENGINE save` first). `platform` chooses from a multi-platform index.
    ///
    /// - Throws: `ImageError` when the input is missing, not an image, malformed, or has no image for
    ///   `platform`; when the engine's save fails.
    /// Opens `input` for `platform` when one is asked for: from an index that platform's image, and a
    /// single image only when its config names that platform (or none). Without one, an index gives
    /// this host's platform and a single image is taken as it is.
    ///
    /// - Throws: as `open(_:platform:)`, and `ImageError.platformMismatch` for a single image of
    ///   another platform.
    public static func open(_ input: String, asking platform: Platform?) async throws -> ContainerImage {
        let image = try await open(input, platform: platform ?? Architecture.host.platform)
        if let platform, let architecture = image.architecture,
            !platform.matches(os: image.os, architecture: architecture, variant: nil)
        {
            image.removeOwnedFiles()
            throw ImageError.platformMismatch(
                wanted: platform.description, image: image.path,
                found: Platform(os: image.os ?? "linux", architecture: architecture).description)
        }
        return image
    }

    public static func open(_ input: String, platform: Platform = Architecture.amd64.platform) async throws
        -> ContainerImage
    {
        if let (engine, name) = engineReference(input) {
            return try await fromEngine(engine, name: name, platform: platform)
        }
        return try open(path: input, platform: platform)
    }

    /// Opens a file or directory (not an engine reference).
    ///
    /// - Throws: `ImageError` when the input is missing, not an image, malformed, or has no image for `platform`.
    public static func open(path input: String, platform: Platform = Architecture.amd64.platform) throws -> ContainerImage {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: input, isDirectory: &isDir) else {
            throw ImageError.notFound(input)
        }
        let path = URL(fileURLWithPath: input).standardizedFileURL.path
        if isDir.boolValue {
            if FileManager.default.fileExists(atPath: path + "/oci-layout"),
                FileManager.default.fileExists(atPath: path + "/index.json")
            {
                return try ociImage(path: path, blobs: DirectoryBlobs(root: path), format: .ociLayout, platform: platform)
            }
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw ImageError.archive(path, message: "permission denied")
            }
            return ContainerImage(
                format: .directory, path: path,
                layers: [LayerSource(location: .directory(path), hasWhiteouts: false, size: 0, description: path)])
        }
        let fd = Foundation.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ImageError.archive(path, message: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        let size = Int64(st.st_size)
        guard size > 0 else { throw ImageError.unrecognised(path, detail: "an empty file") }
        let magic = TarIndex.readBytes(fd: fd, offset: 0, count: Int(min(size, 6))) ?? []
        if isCompressed(magic) {
            // A compressed file: a rootfs tar (docker export | gzip), or an image archive we cannot index.
            if try compressedLooksLikeImageArchive(path) { throw ImageError.compressedImageArchive(path) }
            return rootfsImage(path: path, size: size)
        }
        // Image archives hold a few files per layer; a tar with more members is a root file system,
        // and indexing all of its headers (a million, say) would cost seconds and hundreds of MB.
        guard let index = TarIndex.read(fd: fd, fileSize: size, limit: Self.imageArchiveMemberLimit) else {
            throw ImageError.unrecognised(path, detail: "not a tar archive")
        }
        if !index.isComplete { return rootfsImage(path: path, size: size) }
        if index.members["manifest.json"] != nil {
            return try dockerArchive(path: path, fd: fd, index: index, platform: platform)
        }
        if index.members["oci-layout"] != nil, index.members["index.json"] != nil {
            return try ociImage(
                path: path, blobs: TarBlobs(path: path, fd: fd, index: index), format: .ociArchive,
                platform: platform)
        }
        return rootfsImage(path: path, size: size)
    }

    /// More members than this and a tar is taken for a root file system rather than an image archive.
    static let imageArchiveMemberLimit = 10_000

    static func engineReference(_ input: String) -> (String, String)? {
        for engine in ["docker", "podman"] where input.hasPrefix(engine + ":") {
            return (engine, String(input.dropFirst(engine.count + 1)))
        }
        return nil
    }

    static func isCompressed(_ magic: [UInt8]) -> Bool {
        magic.starts(with: [0x1f, 0x8b]) || magic.starts(with: [0x28, 0xb5, 0x2f, 0xfd])
            || magic.starts(with: [0xfd, 0x37, 0x7a, 0x58, 0x5a]) || magic.starts(with: [0x42, 0x5a, 0x68])
            || magic.starts(with: [0x04, 0x22, 0x4d, 0x18])
    }

    private static func compressedLooksLikeImageArchive(_ path: String) throws -> Bool {
        let stream = try LayerSource(
            location: .file(path), hasWhiteouts: false, size: 0, description: path
        ).open()
        for _ in 0..<8 {
            guard let entry = try stream.next() else { break }
            let name = String(decoding: entry.path, as: UTF8.self)
            if ["manifest.json", "oci-layout", "index.json", "repositories"].contains(name) { return true }
        }
        return false
    }

    private static func rootfsImage(path: String, size: Int64) -> ContainerImage {
        ContainerImage(
            format: .rootfsTar, path: path,
            layers: [LayerSource(location: .file(path), hasWhiteouts: false, size: size, description: path)])
    }

    // MARK: docker-archive

    private struct DockerManifest: Decodable {
        var Config: String
        var RepoTags: [String]?
        var Layers: [String]
    }
    private struct ImageConfigJSON: Decodable {
        struct RootFS: Decodable { var diff_ids: [String]? }
        var architecture: String?
        var os: String?
        var variant: String?
        var rootfs: RootFS?
    }
    /// The `config` section alone, decoded apart so that an odd one never hides the architecture.
    private struct RuntimeConfigJSON: Decodable {
        var config: ContainerConfigJSON?
    }

    /// What the image config says to run; nil when it says nothing or cannot be read.
    static func runtimeConfig(_ configData: Data) -> ContainerConfig? {
        (try? JSONDecoder().decode(RuntimeConfigJSON.self, from: configData))?.config?.config
    }

    private static func dockerArchive(path: String, fd: Int32, index: TarIndex, platform: Platform) throws
        -> ContainerImage
    {
        let blobs = TarBlobs(path: path, fd: fd, index: index)
        let manifests: [DockerManifest]
        do {
            manifests = try JSONDecoder().decode([DockerManifest].self, from: try blobs.data("manifest.json"))
        } catch let error as ImageError {
            throw error
        } catch {
            throw ImageError.malformed(path, detail: "manifest.json: \(jsonProblem(error))")
        }
        var candidates: [(DockerManifest, ImageConfigJSON, Data)] = []
        for m in manifests {
            let configData = try blobs.data(m.Config)
            let config = (try? JSONDecoder().decode(ImageConfigJSON.self, from: configData)) ?? ImageConfigJSON()
            candidates.append((m, config, configData))
        }
        guard !candidates.isEmpty else { throw ImageError.malformed(path, detail: "manifest.json lists no image") }
        let chosen = candidates.first { platform.matches(os: $0.1.os, architecture: $0.1.architecture, variant: $0.1.variant) }
            ?? candidates[0]
        let (manifest, config, configData) = chosen
        let diffIDs = config.rootfs?.diff_ids ?? []
        var layers: [LayerSource] = []
        for (i, name) in manifest.Layers.enumerated() {
            guard let member = index.members[normalise(name)] else {
                throw ImageError.malformed(path, detail: "layer \(name) is listed in manifest.json but missing")
            }
            // Blob digests are checkable from the name (blobs/sha256/HEX), or by the config's
            // diff_id when the layer is stored uncompressed.
            var expected: String? = nil
            if name.hasPrefix("blobs/sha256/") {
                expected = String(name.dropFirst("blobs/sha256/".count))
            } else if i < diffIDs.count,
                let magic = TarIndex.readBytes(fd: fd, offset: member.offset, count: Int(min(member.size, 6))),
                !isCompressed(magic)
            {
                expected = diffIDs[i].replacingOccurrences(of: "sha256:", with: "")
            }
            layers.append(
                LayerSource(
                    location: .range(path, offset: member.offset, length: member.size),
                    expectedDigest: expected, hasWhiteouts: true, size: member.size,
                    description: "\(path): layer \(i + 1) (\(name))"))
        }
        var image = ContainerImage(
            format: .dockerArchive, path: path, layers: layers, architecture: config.architecture, os: config.os,
            digest: SHA256Hasher.hex(configData))
        image.tags = manifest.RepoTags ?? []
        image.config = runtimeConfig(configData)
        return image
    }

    /// A decoding error in a few words: "not valid JSON", "no \"Layers\" in [0]", ...
    static func jsonProblem(_ error: any Error) -> String {
        func at(_ path: [any CodingKey]) -> String {
            path.isEmpty ? "" : " in " + path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        }
        switch error as? DecodingError {
        case .dataCorrupted(let context)?:
            return context.codingPath.isEmpty ? "not valid JSON" : "a bad value\(at(context.codingPath))"
        case .keyNotFound(let key, let context)?: return "no \"\(key.stringValue)\"\(at(context.codingPath))"
        case .typeMismatch(_, let context)?, .valueNotFound(_, let context)?:
            return "\"\(context.codingPath.last?.stringValue ?? "?")\" has the wrong type\(at(context.codingPath.dropLast()))"
        default: return "\(error)"
        }
    }

    static func normalise(_ name: String) -> String {
        var n = name
        while n.hasPrefix("./") { n.removeFirst(2) }
        return n
    }

    // MARK: OCI

    private struct Descriptor: Decodable {
        struct PlatformJSON: Decodable {
            var architecture: String?
            var os: String?
            var variant: String?
        }
        var mediaType: String?
        var digest: String
        var size: Int64?
        var platform: PlatformJSON?
        var annotations: [String: String]?

        /// A build's attestation (buildx's provenance and SBOM manifests, platform unknown/unknown),
        /// not an image to boot.
        var isAttestation: Bool {
            annotations?["vnd.docker.reference.type"] == "attestation-manifest"
                || (platform?.os == "unknown" && platform?.architecture == "unknown")
        }
    }
    private struct Index: Decodable {
        var manifests: [Descriptor]
    }
    private struct Manifest: Decodable {
        var mediaType: String?
        var config: Descriptor
        var layers: [Descriptor]
    }

    private static func ociImage(path: String, blobs: BlobStore, format: ImageFormat, platform: Platform) throws
        -> ContainerImage
    {
        var indexData = try blobs.data("index.json")
        var depth = 0
        while true {
            depth += 1
            guard depth < 5 else { throw ImageError.malformed(path, detail: "nested indexes too deep") }
            let index: Index
            do { index = try JSONDecoder().decode(Index.self, from: indexData) } catch {
                throw ImageError.malformed(path, detail: "index.json: \(jsonProblem(error))")
            }
            guard !index.manifests.isEmpty else { throw ImageError.malformed(path, detail: "the index lists no image") }
            let withPlatform = index.manifests.filter { $0.platform != nil && !$0.isAttestation }
            let chosen: Descriptor
            if withPlatform.isEmpty {
                chosen = index.manifests.first { !$0.isAttestation } ?? index.manifests[0]
            } else if let match = withPlatform.first(where: {
                platform.matches(os: $0.platform?.os, architecture: $0.platform?.architecture, variant: $0.platform?.variant)
            }) {
                chosen = match
            } else {
                throw ImageError.platformNotFound(
                    platform.description, image: path,
                    available: withPlatform.map {
                        "\($0.platform?.os ?? "?")/\($0.platform?.architecture ?? "?")"
                            + ($0.platform?.variant.map { "/" + $0 } ?? "")
                    })
            }
            let blob = try blobs.verifiedData(chosen.digest)
            if chosen.mediaType?.contains("index") == true || chosen.mediaType?.contains("manifest.list") == true {
                indexData = blob
                continue
            }
            let manifest: Manifest
            do { manifest = try JSONDecoder().decode(Manifest.self, from: blob) } catch {
                // Some index entries carry no mediaType; an index decodes as one.
                if (try? JSONDecoder().decode(Index.self, from: blob)) != nil { indexData = blob; continue }
                throw ImageError.malformed(path, detail: "manifest \(chosen.digest): \(jsonProblem(error))")
            }
            let configData = try blobs.verifiedData(manifest.config.digest)
            let config = (try? JSONDecoder().decode(ImageConfigJSON.self, from: configData)) ?? ImageConfigJSON()
            var layers: [LayerSource] = []
            for (i, layer) in manifest.layers.enumerated() {
                let hex = try digestHex(layer.digest, path: path)
                let location = try blobs.location(hex)
                layers.append(
                    LayerSource(
                        location: location, expectedDigest: hex, hasWhiteouts: true, size: layer.size ?? 0,
                        description: "\(path): layer \(i + 1) (sha256:\(hex.prefix(12)))"))
            }
            var image = ContainerImage(
                format: format, path: path, layers: layers, architecture: config.architecture, os: config.os,
                digest: try digestHex(chosen.digest, path: path))
            image.config = runtimeConfig(configData)
            return image
        }
    }

    static func digestHex(_ digest: String, path: String) throws -> String {
        guard digest.hasPrefix("sha256:") else {
            throw ImageError.malformed(path, detail: "unsupported digest \(digest) (only sha256)")
        }
        let hex = String(digest.dropFirst(7))
        guard hex.count == 64, hex.allSatisfy({ $0.isHexDigit }) else {
            throw ImageError.malformed(path, detail: "bad digest \(digest)")
        }
        return hex
    }

    // MARK: engines

    private static func fromEngine(_ engine: String, name: String, platform: Platform) async throws -> ContainerImage {
        guard ProcessRunner.which(engine) != nil else {
            throw ImageError.engine("\(engine) is not installed: save the image with another engine, or pass a file")
        }
        let dir = CacheDirectory.path + "/tmp"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let file = dir + "/\(engine)-save-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).tar"
        Cleanup.shared.add(file)
        var args = [engine]
        if engine == "podman" { args += ["--cgroup-manager", "cgroupfs"] }
        args += ["save"]
        if engine == "podman" { args += ["--format", "docker-archive"] }
        args += ["-o", file, name]
        do {
            try await ProcessRunner.run(args)
        } catch {
            try? FileManager.default.removeItem(atPath: file)
            Cleanup.shared.remove(file)
            throw ImageError.engine("\(engine) save \(name) failed: \(error)")
        }
        do {
            var image = try open(path: file, platform: platform)
            image.path = "\(engine):\(name)"
            image.ownedFiles.append(file)
            return image
        } catch {
            try? FileManager.default.removeItem(atPath: file)
            Cleanup.shared.remove(file)
            throw error
        }
    }
}

/// Where an OCI image's blobs are: a directory, or members of a tar.
protocol BlobStore {
    /// The image the blobs belong to, as errors name it.
    var origin: String { get }
    func data(_ name: String) throws -> Data
    func location(_ hex: String) throws -> LayerSource.Location
}

extension BlobStore {
    /// A small blob (index, manifest, config), checked against its digest.
    func verifiedData(_ digest: String) throws -> Data {
        let hex = try ImageReader.digestHex(digest, path: "blob")
        let data = try data("blobs/sha256/" + hex)
        let actual = SHA256Hasher.hex(data)
        guard actual == hex else {
            throw ImageError.digestMismatch(path: "\(origin): blobs/sha256/\(hex)", expected: hex, actual: actual)
        }
        return data
    }
}

struct DirectoryBlobs: BlobStore {
    var root: String
    var origin: String { root }
    func data(_ name: String) throws -> Data {
        guard let d = FileManager.default.contents(atPath: root + "/" + name) else {
            throw ImageError.malformed(root, detail: "\(name) is missing")
        }
        return d
    }
    func location(_ hex: String) throws -> LayerSource.Location {
        let p = root + "/blobs/sha256/" + hex
        guard FileManager.default.fileExists(atPath: p) else {
            throw ImageError.malformed(root, detail: "blob sha256:\(hex) is missing")
        }
        return .file(p)
    }
}

struct TarBlobs: BlobStore {
    var path: String
    var origin: String { path }
    var fd: Int32
    var index: TarIndex
    func data(_ name: String) throws -> Data {
        guard let m = index.members[ImageReader.normalise(name)], m.size < 64 << 20,
            let bytes = TarIndex.readBytes(fd: fd, offset: m.offset, count: Int(m.size))
        else {
            throw ImageError.malformed(path, detail: "\(name) is missing")
        }
        return Data(bytes)
    }
    func location(_ hex: String) throws -> LayerSource.Location {
        guard let m = index.members["blobs/sha256/" + hex] else {
            throw ImageError.malformed(path, detail: "blob sha256:\(hex) is missing")
        }
        return .range(path, offset: m.offset, length: m.size)
    }
}
