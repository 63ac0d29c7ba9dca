@testable import D2LImage
import D2LDiskModel
import Foundation
import Testing

/// SHA-256 of a file, by the coreutils tool (the test target does not link a hash library).
func sha256(ofFile path: String) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
    process.arguments = [path]
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let out = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: out.prefix(64), as: UTF8.self)
}

/// An OCI image layout built in a directory: blobs, index.json, oci-layout.
struct OCILayout {
    let root: String

    init(root: String) throws {
        self.root = root
        try FileManager.default.createDirectory(atPath: root + "/blobs/sha256", withIntermediateDirectories: true)
        try Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8).write(to: URL(fileURLWithPath: root + "/oci-layout"))
    }

    /// Stores a file as a blob; returns its digest hex.
    @discardableResult
    func addBlob(file: String) throws -> String {
        let hex = try sha256(ofFile: file)
        let dest = root + "/blobs/sha256/" + hex
        if !FileManager.default.fileExists(atPath: dest) { try FileManager.default.copyItem(atPath: file, toPath: dest) }
        return hex
    }

    func addBlob(_ text: String) throws -> (hex: String, size: Int) {
        let tmp = root + "/tmp-blob"
        try Data(text.utf8).write(to: URL(fileURLWithPath: tmp))
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        return (try addBlob(file: tmp), text.utf8.count)
    }

    /// Adds an image (config + manifest) for `arch` with the given layer files; returns the manifest descriptor.
    func addImage(arch: String, layers: [String], gzip: Bool = false) throws -> String {
        var layerDescriptors: [String] = []
        var diffIDs: [String] = []
        for layer in layers {
            let hex = try addBlob(file: layer)
            let size = try FileManager.default.attributesOfItem(atPath: layer)[.size] as? Int ?? 0
            let type = "application/vnd.oci.image.layer.v1.tar" + (gzip ? "+gzip" : "")
            layerDescriptors.append(#"{"mediaType":"\#(type)","digest":"sha256:\#(hex)","size":\#(size)}"#)
            diffIDs.append("\"sha256:\(hex)\"")
        }
        let config = try addBlob(
            #"{"architecture":"\#(arch)","os":"linux","rootfs":{"type":"layers","diff_ids":[\#(diffIDs.joined(separator: ","))]}}"#)
        let manifest = try addBlob(
            #"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:\#(config.hex)","size":\#(config.size)},"layers":[\#(layerDescriptors.joined(separator: ","))]}"#
        )
        return #"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:\#(manifest.hex)","size":\#(manifest.size),"platform":{"architecture":"\#(arch)","os":"linux"}}"#
    }

    func writeIndex(_ manifests: [String]) throws {
        try Data(#"{"schemaVersion":2,"manifests":[\#(manifests.joined(separator: ","))]}"#.utf8)
            .write(to: URL(fileURLWithPath: root + "/index.json"))
    }

    /// Packs the layout into an oci-archive tar.
    func archive(to path: String) throws {
        try TarBuilder.write(path) { t in
            for name in ["oci-layout", "index.json"] {
                try t.file(Array(name.utf8), Array(try Data(contentsOf: URL(fileURLWithPath: root + "/" + name))))
            }
            try t.directory("blobs")
            try t.directory("blobs/sha256")
            for blob in try FileManager.default.contentsOfDirectory(atPath: root + "/blobs/sha256").sorted() {
                let data = try Data(contentsOf: URL(fileURLWithPath: root + "/blobs/sha256/" + blob))
                try t.file(Array("blobs/sha256/\(blob)".utf8), Array(data))
            }
        }
    }
}

@Suite("Image formats")
struct ImageReaderTests {
    /// Two layers: the second removes a file of the first and adds one.
    static func writeLayers(in dir: Scratch, gzip: Bool = false) throws -> [String] {
        let one = try TarBuilder.write(dir.path + "/layer1.tar", gzip: gzip) { t in
            try t.directory("etc")
            try t.file("etc/os-release", "ID=test\n")
            try t.file("etc/removed", "x")
        }
        let two = try TarBuilder.write(dir.path + "/layer2.tar", gzip: gzip) { t in
            try t.whiteout("etc/removed")
            try t.file("etc/added", "y")
        }
        return [one, two]
    }

    static func expectFlattened(_ image: ContainerImage) throws {
        let tree = try flatten(image.layers)
        #expect(tree.names("etc") == ["added", "os-release"])
        #expect(tree.node("etc/os-release")?.content == Array("ID=test\n".utf8))
    }

    @Test("docker-archive: manifest.json, config and layer tars read in place")
    func dockerArchive() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let layers = try Self.writeLayers(in: dir)
        let digests = try layers.map { try sha256(ofFile: $0) }
        let config = #"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:\#(digests[0])","sha256:\#(digests[1])"]}}"#
        let manifest = #"[{"Config":"cfg.json","RepoTags":["example:latest"],"Layers":["aaa/layer.tar","bbb/layer.tar"]}]"#
        let archive = try TarBuilder.write(dir.path + "/image.tar") { t in
            try t.file(Array("aaa/layer.tar".utf8), Array(try Data(contentsOf: URL(fileURLWithPath: layers[0]))))
            try t.file(Array("bbb/layer.tar".utf8), Array(try Data(contentsOf: URL(fileURLWithPath: layers[1]))))
            try t.file("cfg.json", config)
            try t.file("manifest.json", manifest)
        }
        let image = try ImageReader.open(path: archive)
        #expect(image.format == .dockerArchive)
        #expect(image.architecture == "amd64")
        #expect(image.tags == ["example:latest"])
        #expect(image.layers.count == 2)
        #expect(image.layers.map(\.expectedDigest) == digests)
        #expect(image.layers.allSatisfy { $0.hasWhiteouts })
        try Self.expectFlattened(image)
    }

    @Test("OCI archive and OCI layout directory, with gzip layers")
    func ociArchiveAndLayout() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let layers = try Self.writeLayers(in: dir, gzip: true)
        let layout = try OCILayout(root: dir.path + "/layout")
        try layout.writeIndex([try layout.addImage(arch: "amd64", layers: layers, gzip: true)])

        let fromDirectory = try ImageReader.open(path: layout.root)
        #expect(fromDirectory.format == .ociLayout)
        #expect(fromDirectory.architecture == "amd64")
        #expect(fromDirectory.layers.map(\.expectedDigest) == (try layers.map { try sha256(ofFile: $0) }))
        try Self.expectFlattened(fromDirectory)

        try layout.archive(to: dir.path + "/oci.tar")
        let fromArchive = try ImageReader.open(path: dir.path + "/oci.tar")
        #expect(fromArchive.format == .ociArchive)
        #expect(fromArchive.digest == fromDirectory.digest)
        try Self.expectFlattened(fromArchive)
    }

    @Test("a multi-platform index: --platform chooses, an absent platform is refused")
    func platforms() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let layers = try Self.writeLayers(in: dir)
        let layout = try OCILayout(root: dir.path + "/layout")
        try layout.writeIndex([
            try layout.addImage(arch: "arm64", layers: [layers[0]]),
            try layout.addImage(arch: "amd64", layers: layers),
        ])
        let amd64 = try ImageReader.open(path: layout.root)
        #expect(amd64.architecture == "amd64")
        #expect(amd64.layers.count == 2)
        let arm64 = try ImageReader.open(path: layout.root, platform: try Platform(parsing: "linux/arm64"))
        #expect(arm64.architecture == "arm64")
        #expect(arm64.layers.count == 1)
        #expect {
            try ImageReader.open(path: layout.root, platform: try Platform(parsing: "linux/s390x"))
        } throws: { error in
            guard case ImageError.platformNotFound(_, _, let available)? = error as? ImageError else { return false }
            return available.sorted() == ["linux/amd64", "linux/arm64"]
        }
    }

    @Test("buildx's attestation manifests (unknown/unknown) are neither chosen nor listed as platforms")
    func attestationsAreNotPlatforms() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let layers = try Self.writeLayers(in: dir)
        let layout = try OCILayout(root: dir.path + "/layout")
        // An attestation is a manifest whose platform is unknown/unknown, annotated as such.
        let attestation = try layout.addImage(arch: "unknown", layers: [layers[0]])
            .replacingOccurrences(of: #""os":"linux""#, with: #""os":"unknown""#)
            .replacingOccurrences(of: "}}", with: #"},"annotations":{"vnd.docker.reference.type":"attestation-manifest"}}"#)
        try layout.writeIndex([attestation, try layout.addImage(arch: "arm64", layers: layers)])
        #expect {
            try ImageReader.open(path: layout.root)
        } throws: { error in
            guard case ImageError.platformNotFound(_, let image, let available)? = error as? ImageError else { return false }
            return available == ["linux/arm64"] && image == layout.root && "\(error)".contains(layout.root)
        }
        #expect(try ImageReader.open(path: layout.root, platform: try Platform(parsing: "linux/arm64")).architecture == "arm64")
    }

    @Test("a manifest or config blob whose digest does not match is refused")
    func smallBlobDigestMismatch() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let layers = try Self.writeLayers(in: dir)
        let layout = try OCILayout(root: dir.path + "/layout")
        let descriptor = try layout.addImage(arch: "amd64", layers: layers)
        try layout.writeIndex([descriptor])
        // Corrupt the manifest in place: one byte changed, same name.
        let hex = try #require(descriptor.split(separator: "sha256:").dropFirst().first?.prefix(64))
        let blob = layout.root + "/blobs/sha256/" + hex
        var bytes = try Data(contentsOf: URL(fileURLWithPath: blob))
        bytes[bytes.count - 1] = UInt8(ascii: " ")
        try bytes.write(to: URL(fileURLWithPath: blob))
        #expect {
            try ImageReader.open(path: layout.root)
        } throws: { error in
            guard case ImageError.digestMismatch(_, let expected, _)? = error as? ImageError else { return false }
            return expected == String(hex)
        }
    }

    @Test("a layer's digest is checked over its raw (compressed) bytes; a mismatch is refused")
    func layerDigest() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let layers = try Self.writeLayers(in: dir, gzip: true)
        let expected = try sha256(ofFile: layers[0])
        let good = LayerSource(
            location: .file(layers[0]), expectedDigest: expected, hasWhiteouts: true, size: 0, description: "l")
        try LayerDigests([good]).wait()
        let wrong = String(expected.reversed())
        let bad = LayerSource(
            location: .file(layers[0]), expectedDigest: wrong, hasWhiteouts: true, size: 0, description: "l")
        #expect(throws: ImageError.self) { try LayerDigests([bad]).wait() }
    }

    @Test("a root file system tar, plain or gzip-compressed, is one layer without whiteouts")
    func rootfsTar() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        for gzip in [false, true] {
            let path = try TarBuilder.write(dir.path + "/rootfs-\(gzip).tar", gzip: gzip) { t in
                try t.file("etc/os-release", "ID=test\n")
                try t.file("etc/.wh.kept", "")
            }
            let image = try ImageReader.open(path: path)
            #expect(image.format == .rootfsTar)
            #expect(image.layers.count == 1)
            #expect(image.layers.first?.hasWhiteouts == false)
            let tree = try flatten(image.layers)
            #expect(tree.names("etc") == [".wh.kept", "os-release"])
            #expect(tree.node("etc/os-release")?.content == Array("ID=test\n".utf8))
        }
    }

    @Test("a tar with more members than an image archive has is a root file system, even with a /manifest.json")
    func largeRootfsTar() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let path = try TarBuilder.write(dir.path + "/rootfs.tar") { t in
            try t.file("manifest.json", "[]")
            for i in 0..<ImageReader.imageArchiveMemberLimit { try t.file("many/f\(i)", "") }
        }
        let image = try ImageReader.open(path: path)
        #expect(image.format == .rootfsTar)
        #expect(try flatten(image.layers).names("many").count == ImageReader.imageArchiveMemberLimit)
    }

    @Test("a directory holding a root file system, with its symlinks and hard links")
    func directory() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let root = dir.path + "/root"
        let fm = FileManager.default
        try fm.createDirectory(atPath: root + "/usr/bin", withIntermediateDirectories: true)
        try Data("BUSYBOX".utf8).write(to: URL(fileURLWithPath: root + "/usr/bin/busybox"))
        try fm.linkItem(atPath: root + "/usr/bin/busybox", toPath: root + "/usr/bin/sh")
        try fm.createSymbolicLink(atPath: root + "/bin", withDestinationPath: "usr/bin")
        try fm.createSymbolicLink(atPath: root + "/escape", withDestinationPath: "/etc/passwd")
        try Data().write(to: URL(fileURLWithPath: root + "/.wh.plain"))
        let image = try ImageReader.open(path: root)
        #expect(image.format == .directory)
        let tree = try flatten(image.layers)
        #expect(tree.names("") == [".wh.plain", "bin", "escape", "usr"])
        #expect(tree.node("bin")?.symlinkTarget == ImagePath("usr/bin"))
        #expect(tree.node("escape")?.symlinkTarget == ImagePath("/etc/passwd"))
        let kinds = [tree.node("usr/bin/busybox")?.kind, tree.node("usr/bin/sh")?.kind]
        #expect(kinds.contains(.regular) && kinds.contains(.hardlink))
        #expect(tree.stats.dataBytes == 7)
    }

    @Test("inputs that are not images are refused with the reason")
    func notImages() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        #expect {
            try ImageReader.open(path: dir.path + "/missing")
        } throws: { error in
            if case ImageError.notFound? = error as? ImageError { return true }
            return false
        }
        let junk = dir.path + "/junk"
        try Data((0..<4096).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }).write(to: URL(fileURLWithPath: junk))
        #expect {
            try ImageReader.open(path: junk)
        } throws: { error in
            if case ImageError.unrecognised? = error as? ImageError { return true }
            return false
        }
        let gzippedArchive = try TarBuilder.write(dir.path + "/image.tar.gz", gzip: true) { t in
            try t.file("manifest.json", "[]")
        }
        #expect {
            try ImageReader.open(path: gzippedArchive)
        } throws: { error in
            if case ImageError.compressedImageArchive? = error as? ImageError { return true }
            return false
        }
    }
}

@Suite("Image config: what the container runs")
struct ContainerConfigTests {
    static let runtime = #"""
        "config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["exec httpd -f -p 8080"],"Env":["PATH=/usr/bin:/bin","GREETING=hi there"],
        "WorkingDir":"/srv/www","User":"www-data:www-data","ExposedPorts":{"8080/tcp":{},"53/udp":null}}
        """#

    @Test("docker-archive and OCI configs give Entrypoint, Cmd, Env, WorkingDir, User and ExposedPorts")
    func readsTheRuntimeConfig() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let layers = try ImageReaderTests.writeLayers(in: dir)
        let config = #"{"architecture":"amd64","os":"linux",\#(Self.runtime),"rootfs":{"type":"layers","diff_ids":[]}}"#
        let archive = try TarBuilder.write(dir.path + "/image.tar") { t in
            try t.file(Array("aaa/layer.tar".utf8), Array(try Data(contentsOf: URL(fileURLWithPath: layers[0]))))
            try t.file("cfg.json", config)
            try t.file("manifest.json", #"[{"Config":"cfg.json","Layers":["aaa/layer.tar"]}]"#)
        }
        let expected = ContainerConfig(
            entrypoint: ["/bin/sh", "-c"], cmd: ["exec httpd -f -p 8080"], env: ["PATH=/usr/bin:/bin", "GREETING=hi there"],
            workingDir: "/srv/www", user: "www-data:www-data", exposedPorts: ["53/udp", "8080/tcp"])
        let docker = try ImageReader.open(path: archive)
        #expect(docker.config == expected)
        #expect(docker.config?.command == ["/bin/sh", "-c", "exec httpd -f -p 8080"])
        #expect(docker.config?.environment("GREETING") == "hi there")
        #expect(docker.config?.userAndGroup.user == "www-data")
        #expect(docker.config?.userAndGroup.group == "www-data")

        let layout = try OCILayout(root: dir.path + "/oci")
        let layerHex = try layout.addBlob(file: layers[0])
        let blob = try layout.addBlob(config)
        let manifest = try layout.addBlob(
            #"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:\#(blob.hex)","size":\#(blob.size)},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:\#(layerHex)"}]}"#)
        try layout.writeIndex([
            #"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:\#(manifest.hex)","size":\#(manifest.size)}"#
        ])
        #expect(try ImageReader.open(path: dir.path + "/oci").config == expected)

        // A root file system carries no config at all.
        #expect(try ImageReader.open(path: layers[0]).config == nil)
    }

    @Test("a config section of an unexpected shape is ignored and the architecture still read")
    func oddConfigKeepsTheArchitecture() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let layers = try ImageReaderTests.writeLayers(in: dir)
        let archive = try TarBuilder.write(dir.path + "/image.tar") { t in
            try t.file(Array("aaa/layer.tar".utf8), Array(try Data(contentsOf: URL(fileURLWithPath: layers[0]))))
            try t.file("cfg.json", #"{"architecture":"amd64","os":"linux","config":{"Cmd":"not a list"}}"#)
            try t.file("manifest.json", #"[{"Config":"cfg.json","Layers":["aaa/layer.tar"]}]"#)
        }
        let image = try ImageReader.open(path: archive)
        #expect(image.architecture == "amd64")
        #expect(image.config == nil)
    }

    @Test("only a shell (Debian's `bash`) is no service; a shell with a script is")
    func onlyAShell() {
        #expect(ContainerConfig(cmd: ["bash"]).isOnlyShell)
        #expect(ContainerConfig(cmd: ["/bin/sh"]).isOnlyShell)
        #expect(!ContainerConfig(cmd: ["sh", "-c", "httpd"]).isOnlyShell)
        #expect(!ContainerConfig(entrypoint: ["/usr/bin/tini", "--"], cmd: ["bash"]).isOnlyShell)
        #expect(!ContainerConfig(cmd: ["nginx"]).isOnlyShell)
    }
}
