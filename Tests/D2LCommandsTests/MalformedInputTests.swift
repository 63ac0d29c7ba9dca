import D2LSupport
import Foundation
import Testing

/// One malformed input for `d2l build`, written by the test, and what its error must say.
struct MalformedInput: Sendable, CustomTestStringConvertible {
    var name: String
    /// Words the error must contain (case-insensitive), besides the input's path.
    var expect: [String]
    /// Runs d2l as this user (setpriv), for permissions root would ignore.
    var user: String?
    /// The output goes to a 20 MiB tmpfs (root only), so that a bomb meets a bounded file system.
    var smallOutput = false
    /// Writes the input in the folder given; returns its path.
    var make: @Sendable (String) async throws -> String

    var testDescription: String { name }

    init(
        _ name: String, expect: [String], user: String? = nil, smallOutput: Bool = false,
        make: @escaping @Sendable (String) async throws -> String
    ) {
        self.name = name
        self.expect = expect
        self.user = user
        self.smallOutput = smallOutput
        self.make = make
    }
}

/// A corpus of malformed inputs: each must give a short error that names the input and the problem,
/// exit 1, leave no output and no temporary file, and write nothing outside the image.
@Suite("Malformed inputs", .serialized)
struct MalformedInputTests {
    typealias Entry = BuildInputs.Entry
    static let base = BuildInputs.bootable
    /// Where an entry that escaped the image would land.
    static let escaped = "/tmp/d2l-escaped-\(getpid())"

    static func noise(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    /// A rootfs tar of the bootable base plus `extra`, written at DIR/rootfs.tar.
    static func rootfs(_ extra: [Entry], _ dir: String, name: String = "rootfs.tar") throws -> String {
        let path = dir + "/" + name
        try BuildInputs.write(BuildInputs.tar(base + extra), to: path)
        return path
    }

    static func spoil(_ bytes: [UInt8], at fraction: Double, count: Int = 64) -> [UInt8] {
        var out = bytes
        let start = Int(Double(out.count) * fraction)
        for i in start..<min(out.count, start + count) { out[i] ^= 0x5A }
        return out
    }

    static func compressedRootfs(_ tool: String, _ dir: String) async throws -> [UInt8] {
        try await BuildInputs.compress(BuildInputs.tar(base + [.file("opt/noise", noise(300_000))]), with: tool, in: dir)
    }

    /// An OCI layout of the bootable base (one gzip layer), spoiled by `change`, at DIR/layout.
    static func layout(
        _ dir: String, platforms: [(os: String, architecture: String)]? = nil,
        _ change: (inout BuildInputs.OCILayout) throws -> Void = { _ in }
    ) async throws -> String {
        let layer = try await BuildInputs.compress(BuildInputs.tar(base), with: "gzip", in: dir)
        var oci = try BuildInputs.OCILayout(layers: [layer], platforms: platforms)
        try change(&oci)
        try oci.write(to: dir + "/layout")
        return dir + "/layout"
    }

    /// Changes the manifest's text and points the index at the changed manifest (its new digest and size).
    static func replaceManifest(_ oci: inout BuildInputs.OCILayout, _ change: (String) throws -> String) throws {
        let old = "blobs/sha256/" + oci.manifestDigest
        let oldBytes = oci.files[old] ?? []
        let text = try change(String(decoding: oldBytes, as: UTF8.self))
        let digest = BuildInputs.sha256(Array(text.utf8))
        oci.files[old] = nil
        oci.files["blobs/sha256/" + digest] = Array(text.utf8)
        oci.files["index.json"] = Array(
            String(decoding: oci.files["index.json"] ?? [], as: UTF8.self)
                .replacingOccurrences(of: oci.manifestDigest, with: digest)
                .replacingOccurrences(of: "\"size\":\(oldBytes.count)", with: "\"size\":\(text.utf8.count)")
                .utf8)
    }

    static let corpus: [MalformedInput] = [
        // Archives and compressed streams.
        .init("a tar cut inside a file's data", expect: ["truncated"]) { dir in
            let tar = BuildInputs.tar(base + [.file("opt/data", noise(100_000))])
            try BuildInputs.write(Array(tar.prefix(tar.count - 1024 - 60_000)), to: dir + "/cut.tar")
            return dir + "/cut.tar"
        },
        .init("a tar cut inside a header", expect: ["truncated"]) { dir in
            let tar = BuildInputs.tar(base + [.file("opt/a", [1, 2, 3])])
            try BuildInputs.write(Array(tar.prefix(tar.count - 1024 - 512 - 300)), to: dir + "/cut.tar")
            return dir + "/cut.tar"
        },
        .init("a tar header whose checksum is wrong", expect: ["damaged"]) { dir in
            var tar = BuildInputs.tar(base + [.file("opt/a", [1, 2, 3]), .file("opt/b", [4])])
            // The name of opt/a's header, one byte changed: its checksum no longer adds up.
            let headerStart = tar.count - 1024 - 4 * 512
            tar[headerStart + 4] ^= 0x01
            try BuildInputs.write(tar, to: dir + "/bad.tar")
            return dir + "/bad.tar"
        },
        .init("a gzip stream cut in half", expect: ["gzip", "cut short", "end of file"]) { dir in
            let gz = try await compressedRootfs("gzip", dir)
            try BuildInputs.write(Array(gz.prefix(gz.count / 2)), to: dir + "/cut.tar.gz")
            return dir + "/cut.tar.gz"
        },
        .init("a gzip stream with damaged bytes", expect: ["gzip"]) { dir in
            try BuildInputs.write(spoil(try await compressedRootfs("gzip", dir), at: 0.01), to: dir + "/bad.tar.gz")
            return dir + "/bad.tar.gz"
        },
        // Inside the random bytes' stored blocks, deflate reads on: only the CRC-32 in the trailer,
        // which libarchive does not check (filter_gzip.c: "XXX TODO: Verify the length and CRC"), tells.
        .init("a gzip stream with damaged bytes where deflate stores them", expect: ["gzip", "crc"]) { dir in
            try BuildInputs.write(spoil(try await compressedRootfs("gzip", dir), at: 0.5), to: dir + "/bad.tar.gz")
            return dir + "/bad.tar.gz"
        },
        .init("a zstd stream cut in half", expect: ["truncated"]) { dir in
            let zst = try await compressedRootfs("zstd", dir)
            try BuildInputs.write(Array(zst.prefix(zst.count / 2)), to: dir + "/cut.tar.zst")
            return dir + "/cut.tar.zst"
        },
        .init("a zstd stream with damaged bytes", expect: ["zstd"]) { dir in
            try BuildInputs.write(spoil(try await compressedRootfs("zstd", dir), at: 0.5), to: dir + "/bad.tar.zst")
            return dir + "/bad.tar.zst"
        },
        .init("random bytes", expect: ["not a container image"]) { dir in
            try BuildInputs.write(noise(100_000), to: dir + "/noise.bin")
            return dir + "/noise.bin"
        },
        .init("an empty file", expect: ["not a container image", "empty"]) { dir in
            try BuildInputs.write([], to: dir + "/empty.tar")
            return dir + "/empty.tar"
        },
        // docker-archive manifests that lie or point nowhere.
        .init("a docker-archive whose manifest.json is not JSON", expect: ["manifest.json"]) { dir in
            try BuildInputs.write(
                try BuildInputs.dockerArchive(layers: [BuildInputs.tar(base)], manifest: Array("[{\"Config\":".utf8)),
                to: dir + "/image.tar")
            return dir + "/image.tar"
        },
        .init("a docker-archive whose manifest lists a layer it lacks", expect: ["missing"]) { dir in
            let layer = BuildInputs.tar(base)
            try BuildInputs.write(
                try BuildInputs.dockerArchive(layers: [layer], dropMembers: [BuildInputs.sha256(layer) + "/layer.tar"]),
                to: dir + "/image.tar")
            return dir + "/image.tar"
        },
        .init("a docker-archive whose config is missing", expect: ["json"]) { dir in
            let layer = BuildInputs.tar(base)
            let configName = BuildInputs.sha256(try BuildInputs.config(diffIDs: [BuildInputs.sha256(layer)])) + ".json"
            try BuildInputs.write(
                try BuildInputs.dockerArchive(layers: [layer], dropMembers: [configName]), to: dir + "/image.tar")
            return dir + "/image.tar"
        },
        .init("a docker-archive whose manifest lists no image", expect: ["no image"]) { dir in
            try BuildInputs.write(
                try BuildInputs.dockerArchive(layers: [BuildInputs.tar(base)], manifest: Array("[]".utf8)),
                to: dir + "/image.tar")
            return dir + "/image.tar"
        },
        .init("a docker-archive layer whose bytes do not match its digest", expect: ["digest mismatch"]) { dir in
            let layer = BuildInputs.tar(base)
            let lie = "blobs/sha256/" + BuildInputs.sha256(Array("something else".utf8))
            let configBytes = try BuildInputs.config(diffIDs: [BuildInputs.sha256(layer)])
            let configName = "blobs/sha256/" + BuildInputs.sha256(configBytes)
            let manifest = try BuildInputs.json([["Config": configName, "Layers": [lie]]])
            try BuildInputs.write(
                BuildInputs.tar([
                    .file("manifest.json", manifest), .directory("blobs/"), .directory("blobs/sha256/"),
                    .file(configName, configBytes), .file(lie, layer),
                ]), to: dir + "/image.tar")
            return dir + "/image.tar"
        },
        // OCI layouts and indexes.
        .init("an OCI index.json that is not JSON", expect: ["index.json"]) { dir in
            try await layout(dir) { $0.files["index.json"] = Array("{\"manifests\": [".utf8) }
        },
        .init("an OCI index pointing at a manifest that is not there", expect: ["missing"]) { dir in
            try await layout(dir) { $0.files["blobs/sha256/" + $0.manifestDigest] = nil }
        },
        .init("an OCI manifest whose config blob is missing", expect: ["missing"]) { dir in
            try await layout(dir) { $0.files["blobs/sha256/" + $0.configDigest] = nil }
        },
        .init("an OCI manifest whose layer blob is missing", expect: ["sha256:"]) { dir in
            try await layout(dir) { $0.files["blobs/sha256/" + $0.layerDigests[0]] = nil }
        },
        .init("an OCI layer blob with damaged gzip bytes", expect: ["digest mismatch"]) { dir in
            try await layout(dir) { oci in
                let name = "blobs/sha256/" + oci.layerDigests[0]
                oci.files[name] = spoil(oci.files[name] ?? [], at: 0.0, count: 16)
            }
        },
        .init("an OCI layer blob replaced by another valid layer", expect: ["digest mismatch"]) { dir in
            let other = try await BuildInputs.compress(BuildInputs.tar(base + [.file("etc/extra", [1])]), with: "gzip", in: dir)
            return try await layout(dir) { $0.files["blobs/sha256/" + $0.layerDigests[0]] = other }
        },
        .init("an OCI manifest whose bytes do not match its digest", expect: ["digest mismatch"]) { dir in
            try await layout(dir) { oci in
                let name = "blobs/sha256/" + oci.manifestDigest
                oci.files[name] = (oci.files[name] ?? []) + Array("  ".utf8)
            }
        },
        .init("an OCI index without the wanted platform", expect: ["linux/amd64", "linux/arm64", "linux/s390x", "--platform"]) {
            dir in
            try await layout(dir, platforms: [("linux", "arm64"), ("linux", "s390x")])
        },
        .init("OCI indexes nested six deep", expect: ["nested"]) { dir in
            try await layout(dir) { oci in
                var target = (digest: oci.manifestDigest, type: "application/vnd.oci.image.manifest.v1+json",
                    size: oci.files["blobs/sha256/" + oci.manifestDigest]?.count ?? 0)
                for _ in 0..<6 {
                    let index = try BuildInputs.json([
                        "schemaVersion": 2,
                        "manifests": [["mediaType": target.type, "digest": "sha256:" + target.digest, "size": target.size]],
                    ])
                    oci.files["blobs/sha256/" + BuildInputs.sha256(index)] = index
                    target = (BuildInputs.sha256(index), "application/vnd.oci.image.index.v1+json", index.count)
                }
                oci.files["index.json"] = oci.files["blobs/sha256/" + target.digest]
            }
        },
        .init("an OCI layer digest that is not sha256", expect: ["digest", "md5"]) { dir in
            try await layout(dir) { oci in
                let layer = "sha256:" + oci.layerDigests[0]
                try replaceManifest(&oci) { $0.replacingOccurrences(of: layer, with: "md5:0123456789abcdef") }
            }
        },
        .init("an OCI manifest without a config", expect: ["no \"config\""]) { dir in
            try await layout(dir) { oci in
                try replaceManifest(&oci) { text in
                    let config = try #require(text.range(of: #""config":\{[^}]*\},"#, options: .regularExpression))
                    return text.replacingCharacters(in: config, with: "")
                }
            }
        },
        .init("a docker-archive manifest whose Layers is not a list", expect: ["Layers", "wrong type"]) { dir in
            try BuildInputs.write(
                try BuildInputs.dockerArchive(
                    layers: [BuildInputs.tar(base)], manifest: Array(#"[{"Config":"c.json","Layers":"layer.tar"}]"#.utf8)),
                to: dir + "/image.tar")
            return dir + "/image.tar"
        },
        // Entries.
        .init("an entry that climbs out of the root with ..", expect: [".."]) { dir in
            try rootfs([.file("../../../../../../../.." + escaped, Array("out".utf8))], dir)
        },
        .init("a hard link whose target climbs out with ..", expect: ["hard link", ".."]) { dir in
            try rootfs([.directory("opt/"), .hardlink("opt/h", to: "../../../../etc/shadow")], dir)
        },
        .init("a hard link to a directory", expect: ["hard link", "a directory"]) { dir in
            try rootfs([.directory("opt/"), .hardlink("opt/h", to: "etc")], dir)
        },
        .init("a hard link to nothing", expect: ["hard link", "opt/nothing"]) { dir in
            try rootfs([.directory("opt/"), .hardlink("opt/h", to: "opt/nothing")], dir)
        },
        .init("a file that claims 8 GiB and ends", expect: ["truncated"]) { dir in
            var huge = Entry.file("opt/huge", noise(1000))
            huge.claimedSize = 8 << 30
            let tar = BuildInputs.tar(base + [huge])
            try BuildInputs.write(Array(tar.prefix(tar.count - 1024)), to: dir + "/huge.tar")
            return dir + "/huge.tar"
        },
        .init("an owner beyond 32 bits", expect: ["owner"]) { dir in
            var entry = Entry.file("opt/owned", [1])
            entry.uid = 1 << 40
            entry.gid = 1 << 40
            return try rootfs([.directory("opt/"), entry], dir)
        },
        .init("a time beyond any calendar", expect: ["time"]) { dir in
            var entry = Entry.file("opt/late", [1])
            entry.mtime = Int64.max / 2
            return try rootfs([.directory("opt/"), entry], dir)
        },
        .init("a layer that expands to 2 GiB of zeros", expect: ["free", "opt/zeros alone"], smallOutput: true) { dir in
            // The tar without its end, a header for 2 GiB, the zeros and the end, through zstd by a pipe.
            var tar = BuildInputs.tar(base)
            tar.removeLast(1024)
            try BuildInputs.write(tar + BuildInputs.header(Entry(name: "opt/zeros", claimedSize: 2 << 30)), to: dir + "/head")
            try await ProcessRunner.run([
                "sh", "-c",
                "{ cat \(dir)/head; head -c \(2 << 30) /dev/zero; head -c 1024 /dev/zero; } | zstd -q -c > \(dir)/bomb.tar.zst",
            ])
            unlink(dir + "/head")
            return dir + "/bomb.tar.zst"
        },
        .init("a file nobody may read, in a folder read by an ordinary user", expect: ["opt/secret", "permission denied"], user: "nobody") {
            dir in
            let root = dir + "/root"
            try BuildInputs.bootableFolder(root)
            try FileManager.default.createDirectory(atPath: root + "/opt", withIntermediateDirectories: true)
            try BuildInputs.write(Array("secret".utf8), to: root + "/opt/secret")
            chmod(root + "/opt/secret", 0)
            return root
        },
        .init("a folder nobody may enter, in a folder read by an ordinary user", expect: ["opt/private", "permission denied"], user: "nobody") {
            dir in
            let root = dir + "/root"
            try BuildInputs.bootableFolder(root)
            try FileManager.default.createDirectory(atPath: root + "/opt/private", withIntermediateDirectories: true)
            try BuildInputs.write(Array("secret".utf8), to: root + "/opt/private/file")
            chmod(root + "/opt/private", 0o700)
            return root
        },
    ]

    @Test("a malformed input: a short error naming it and the problem, exit 1, nothing left", arguments: corpus)
    func malformed(input: MalformedInput) async throws {
        // A folder named by a number, not by the case: the words the error must say cannot come from its path.
        let number = try #require(Self.corpus.firstIndex { $0.name == input.name })
        let dir = try BuildInputs.scratch("malformed-\(number)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = try await input.make(dir)
        let out = dir + "/out"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        var mounted = false
        if input.smallOutput {
            try #require(geteuid() == 0, "a bounded output needs a tmpfs, which needs root")
            mounted = mount("d2l-bounded", out, "tmpfs", 0, "size=20m") == 0
            try #require(mounted, "mount tmpfs: \(String(cString: strerror(errno)))")
        }
        defer { if mounted { umount2(out, Int32(MNT_DETACH)) } }
        chmod(out, 0o1777)
        let before = BuildInputs.listing(dir)
        let result = try await BuildInputs.d2l(["build", path, "-o", out + "/disk.img", "-q"], asUser: input.user)
        let error = result.stderr.split(separator: "\n").filter { !$0.hasPrefix("d2l: warning") }.joined(separator: "\n")
        print("[\(input.name)] status \(result.status): \(error)")
        #expect(result.status == 1, "\(result.stderr)")
        #expect(error.contains(path) || error.contains((path as NSString).lastPathComponent), "the error names the input: \(error)")
        let words = error.replacingOccurrences(of: dir, with: "").lowercased()
        for word in input.expect {
            #expect(words.contains(word.lowercased()), "the error says \(word): \(error)")
        }
        #expect(error.count < 600, "a short error: \(error)")
        #expect(BuildInputs.listing(out).isEmpty, "no output, no temporary file")
        #expect(BuildInputs.listing(dir) == before, "nothing written beside the input")
        #expect(!FileManager.default.fileExists(atPath: Self.escaped) && !FileManager.default.fileExists(atPath: Self.escaped + "-absolute"))
    }

    @Test func theCorpusHasThirtyInputs() { #expect(Self.corpus.count >= 30) }

    /// `d2l inspect` explains a layer it cannot read by the blob's digest too.
    @Test func inspectReportsTheDigestMismatch() async throws {
        let dir = try BuildInputs.scratch("inspect-digest")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = try await Self.layout(dir) { oci in
            let name = "blobs/sha256/" + oci.layerDigests[0]
            oci.files[name] = Self.spoil(oci.files[name] ?? [], at: 0.0, count: 16)
        }
        let result = try await BuildInputs.d2l(["inspect", path])
        #expect(result.status == 1)
        #expect(result.stderr.contains("digest mismatch") && result.stderr.contains(path), "\(result.stderr)")
    }

    /// An absolute name is taken inside the image, as tar, Docker and containerd take it: the build
    /// succeeds and nothing lands at the absolute path on the host.
    @Test func anAbsoluteNameStaysInTheImage() async throws {
        let dir = try BuildInputs.scratch("absolute-name")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = try Self.rootfs([.file(Self.escaped + "-absolute", Array("in".utf8))], dir)
        let result = try await BuildInputs.d2l(["build", path, "-o", dir + "/disk.img", "-q"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: Self.escaped + "-absolute"))
        #expect(BuildInputs.listing(dir) == ["disk.img", "rootfs.tar"])
    }
}
