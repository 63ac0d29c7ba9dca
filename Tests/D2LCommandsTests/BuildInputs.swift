import D2LSupport
import Foundation
import Testing

/// Inputs for `d2l build` that the tests write themselves: tars written header by header (so that
/// they can lie), docker-archives and OCI layouts around them, and the built d2l binary to run.
enum BuildInputs {
    struct Failure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    /// The d2l executable built beside the test bundle (or $D2L_BINARY).
    static func d2lBinary() throws -> String {
        if let path = ProcessInfo.processInfo.environment["D2L_BINARY"] { return path }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let candidate = ((exe as NSString).deletingLastPathComponent as NSString).appendingPathComponent("d2l")
        guard FileManager.default.isExecutableFile(atPath: candidate) else {
            throw Failure("d2l binary not found beside \(exe); run `swift build --build-tests` first or set D2L_BINARY")
        }
        return candidate
    }

    /// A fresh folder every user can enter (the unprivileged case runs d2l as nobody).
    static func scratch(_ name: String) throws -> String {
        let dir = NSTemporaryDirectory() + "d2l-inputs-\(getpid())-\(name)"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        chmod(dir, 0o755)
        return dir
    }

    /// Every path under `dir`, relative, sorted.
    static func listing(_ dir: String) -> [String] {
        ((FileManager.default.enumerator(atPath: dir)?.allObjects as? [String]) ?? []).sorted()
    }

    static func write(_ bytes: [UInt8], to path: String) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// `bytes` through a compressor's command line (gzip, zstd).
    static func compress(_ bytes: [UInt8], with tool: String, in dir: String) async throws -> [UInt8] {
        let plain = dir + "/.compress-in"
        try write(bytes, to: plain)
        defer { unlink(plain) }
        try await ProcessRunner.run(["sh", "-c", "\(tool) -c -q < \(plain) > \(plain).out"])
        defer { unlink(plain + ".out") }
        return Array(try Data(contentsOf: URL(fileURLWithPath: plain + ".out")))
    }

    // MARK: tar, header by header

    /// One tar entry; the numbers are written as given, however absurd.
    struct Entry {
        var name: String
        /// ustar type flag: "0" file, "1" hard link, "2" symlink, "5" directory.
        var type: Character = "0"
        var data: [UInt8] = []
        var mode: Int64 = 0o644
        var uid: Int64 = 0
        var gid: Int64 = 0
        var mtime: Int64 = 1_700_000_000
        var link = ""
        /// The size the header claims, when it is not the data's.
        var claimedSize: Int64?

        static func file(_ name: String, _ data: [UInt8], mode: Int64 = 0o644) -> Entry {
            Entry(name: name, data: data, mode: mode)
        }
        static func directory(_ name: String) -> Entry { Entry(name: name, type: "5", mode: 0o755) }
        static func symlink(_ name: String, to target: String) -> Entry {
            Entry(name: name, type: "2", mode: 0o777, link: target)
        }
        static func hardlink(_ name: String, to target: String) -> Entry { Entry(name: name, type: "1", link: target) }
    }

    /// A numeric field: octal when it fits, else base-256 (GNU's form for big and negative numbers).
    static func numeric(_ value: Int64, width: Int) -> [UInt8] {
        let octal = String(value, radix: 8)
        if value >= 0, octal.count < width {
            return Array((String(repeating: "0", count: width - 1 - octal.count) + octal).utf8) + [0]
        }
        var out = [UInt8](repeating: value < 0 ? 0xFF : 0, count: width)
        var v = value
        for i in stride(from: width - 1, to: 0, by: -1) {
            out[i] = UInt8(truncatingIfNeeded: v)
            v >>= 8
        }
        out[0] = value < 0 ? 0xFF : 0x80
        return out
    }

    /// A 512-byte ustar header.
    static func header(_ entry: Entry) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ bytes: [UInt8], at offset: Int, width: Int) {
            for (i, b) in bytes.prefix(width).enumerated() { h[offset + i] = b }
        }
        put(Array(entry.name.utf8), at: 0, width: 100)
        put(numeric(entry.mode, width: 8), at: 100, width: 8)
        put(numeric(entry.uid, width: 8), at: 108, width: 8)
        put(numeric(entry.gid, width: 8), at: 116, width: 8)
        put(numeric(entry.claimedSize ?? Int64(entry.data.count), width: 12), at: 124, width: 12)
        put(numeric(entry.mtime, width: 12), at: 136, width: 12)
        h[156] = entry.type.asciiValue ?? 0x30
        put(Array(entry.link.utf8), at: 157, width: 100)
        put(Array("ustar\0".utf8) + Array("00".utf8), at: 257, width: 8)
        put(Array("root".utf8), at: 265, width: 32)
        put(Array("root".utf8), at: 297, width: 32)
        for i in 148..<156 { h[i] = 0x20 }
        let sum = h.reduce(0) { $0 + Int($1) }
        put(Array((String(repeating: "0", count: 6 - String(sum, radix: 8).count) + String(sum, radix: 8)).utf8) + [0, 0x20], at: 148, width: 8)
        return h
    }

    /// A tar of `entries` and its two zero blocks.
    static func tar(_ entries: [Entry]) -> [UInt8] {
        var out: [UInt8] = []
        for entry in entries {
            out += header(entry)
            out += entry.data
            out += [UInt8](repeating: 0, count: (512 - entry.data.count % 512) % 512)
        }
        return out + [UInt8](repeating: 0, count: 1024)
    }

    /// What the builder checks for: an x86-64 init, a kernel and initrd in /boot, os-release and
    /// systemd-boot (the hybrid disk's UEFI loader), as D2LDiskTests' BootLayoutTests.makeRoot.
    static var bootable: [Entry] {
        var elf = [UInt8](repeating: 0, count: 64)
        elf.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        elf[18] = 62
        return ["boot/", "sbin/", "etc/", "usr/", "usr/lib/", "usr/lib/systemd/", "usr/lib/systemd/boot/",
            "usr/lib/systemd/boot/efi/"].map(Entry.directory) + [
            .file("sbin/init", elf, mode: 0o755),
            .file("boot/vmlinuz-1.0-test", [UInt8](repeating: 0x4B, count: 300_000)),
            .file("boot/initrd.img-1.0-test", [UInt8](repeating: 0x49, count: 200_000)),
            .file("etc/os-release", Array("PRETTY_NAME=\"Test Linux\"\n".utf8)),
            .file("usr/lib/systemd/boot/efi/systemd-bootx64.efi", Array("MZ...#### LoaderInfo: systemd-boot 252 ####...".utf8)),
        ]
    }

    /// The same root as a folder.
    static func bootableFolder(_ dir: String) throws {
        for entry in bootable {
            let path = dir + "/" + entry.name
            if entry.type == "5" {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            } else {
                try write(entry.data, to: path)
                chmod(path, mode_t(entry.mode))
            }
        }
    }

    // MARK: image layouts

    static func sha256(_ bytes: [UInt8]) -> String { SHA256Hasher.hex(Data(bytes)) }

    static func json(_ object: Any) throws -> [UInt8] {
        Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
    }

    static func config(architecture: String = "amd64", diffIDs: [String]) throws -> [UInt8] {
        try json([
            "architecture": architecture, "os": "linux",
            "rootfs": ["type": "layers", "diff_ids": diffIDs.map { "sha256:" + $0 }],
        ])
    }

    /// A docker-archive (docker save): manifest.json, the config and the layers as members of a tar.
    /// `manifest` replaces the manifest's text when given.
    static func dockerArchive(
        layers: [[UInt8]], manifest: [UInt8]? = nil, dropMembers: Set<String> = [], architecture: String = "amd64"
    ) throws -> [UInt8] {
        let layerNames = layers.map { sha256($0) + "/layer.tar" }
        let configBytes = try config(architecture: architecture, diffIDs: layers.map(sha256))
        let configName = sha256(configBytes) + ".json"
        let manifestBytes = try manifest ?? json([["Config": configName, "RepoTags": ["test:latest"], "Layers": layerNames]])
        var members: [Entry] = [.file("manifest.json", manifestBytes), .file(configName, configBytes)]
        for (name, layer) in zip(layerNames, layers) {
            members += [.directory(String(name.dropLast("layer.tar".count))), .file(name, layer)]
        }
        return tar(members.filter { !dropMembers.contains($0.name) })
    }

    /// What an OCI layout holds, by file name, for the tests to spoil before it is written.
    struct OCILayout {
        var files: [String: [UInt8]] = [:]
        var layerDigests: [String] = []
        var manifestDigest = ""
        var configDigest = ""

        /// An OCI layout of one image whose layers are `layers` (their bytes as stored, compressed or not).
        init(layers: [[UInt8]], mediaType: String = "application/vnd.oci.image.layer.v1.tar+gzip",
            platforms: [(os: String, architecture: String)]? = nil) throws
        {
            files["oci-layout"] = Array(#"{"imageLayoutVersion":"1.0.0"}"#.utf8)
            let configBytes = try config(diffIDs: layers.map(sha256))
            configDigest = sha256(configBytes)
            layerDigests = layers.map(sha256)
            for layer in layers { files["blobs/sha256/" + sha256(layer)] = layer }
            files["blobs/sha256/" + configDigest] = configBytes
            let manifest = try json([
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": ["mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + configDigest, "size": configBytes.count],
                "layers": layers.map { ["mediaType": mediaType, "digest": "sha256:" + sha256($0), "size": $0.count] },
            ])
            manifestDigest = sha256(manifest)
            files["blobs/sha256/" + manifestDigest] = manifest
            let entries: [[String: Any]] = (platforms ?? [("linux", "amd64")]).map {
                ["mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + manifestDigest,
                    "size": manifest.count, "platform": ["os": $0.os, "architecture": $0.architecture]]
            }
            files["index.json"] = try json(["schemaVersion": 2, "manifests": entries])
        }

        func write(to dir: String) throws {
            for (name, bytes) in files {
                let path = dir + "/" + name
                try FileManager.default.createDirectory(
                    atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try BuildInputs.write(bytes, to: path)
            }
        }
    }

    /// Runs d2l (as `user` when given, through setpriv); returns its status and stderr.
    static func d2l(_ arguments: [String], asUser user: String? = nil) async throws -> (status: Int32, stderr: String) {
        var command = [try d2lBinary()] + arguments
        if let user {
            command = ["setpriv", "--reuid=\(user)", "--regid=nogroup", "--clear-groups"] + command
        }
        let result = await ProcessRunner.capture(command)
        return (result.status, result.stderr)
    }
}
