import D2LSupport
import Foundation
import Testing

/// `d2l build` on a real Debian bookworm userland, as an unprivileged user, booted for real.
@Suite("d2l build on Debian bookworm", .serialized, .timeLimit(.minutes(20)))
struct BuildTests {
    /// Hard-links (or copies) an input into a directory nobody can read.
    private func readableCopy(_ path: String, in dir: String) throws -> String {
        let target = dir + "/" + (path as NSString).lastPathComponent
        if link(path, target) != 0 { try FileManager.default.copyItem(atPath: path, toPath: target) }
        chmod(target, 0o644)
        return target
    }

    private func leftovers(in dir: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix(".") }
    }

    private func partitions(_ disk: String) async throws -> [(start: Int64, size: Int64, type: String)] {
        let out = try await Fixtures.run(["sfdisk", "--json", disk])
        #expect(out.status == 0, "sfdisk: \(out.stderr)")
        struct Table: Decodable {
            struct PT: Decodable {
                struct P: Decodable { var start: Int64; var size: Int64; var type: String; var bootable: Bool? }
                var partitions: [P]
            }
            var partitiontable: PT
        }
        let table = try JSONDecoder().decode(Table.self, from: Data(out.stdout.utf8))
        return table.partitiontable.partitions.map { ($0.start * 512, $0.size * 512, $0.type) }
    }

    /// Boots the disk under what it claims (a hybrid disk: BIOS, then UEFI), or under `firmware`.
    private func verifyBoots(_ disk: String, firmware: [String] = [], expect: String? = nil) async throws {
        let result = try await Fixtures.d2l(
            ["verify", disk, "--timeout", "400"] + firmware.flatMap { ["--firmware", $0] })
        #expect(result.status == 0, "d2l verify \(disk) failed:\n\(result.stdout)\n\(result.stderr)")
        if let expect { #expect(result.stdout.contains(expect), "\(result.stdout)") }
    }

    @Test("docker-archive -> hybrid GPT disk, built as nobody, passes e2fsck and boots to login under BIOS and UEFI")
    func dockerArchiveAsNobody() async throws {
        let dir = try Fixtures.scratchDirectory("docker")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let input = try readableCopy(try await Fixtures.debianDockerArchive(), in: dir)
        let disk = dir + "/linux.img"
        let result = try await Fixtures.d2l(
            ["build", input, "-o", disk, "--root-password-empty", "--hostname", "itest", "--json"], asUser: "nobody")
        try #require(result.status == 0, "build failed: \(result.stderr)")
        #expect(try leftovers(in: dir).isEmpty)
        let summary = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        #expect((summary?["kernelVersion"] as? String)?.hasSuffix("-amd64") == true)
        #expect((summary?["distro"] as? String)?.contains("bookworm") == true)
        var st = stat()
        stat(disk, &st)
        #expect(st.st_uid == 65534, "the disk belongs to the user who built it")

        let parts = try await partitions(disk)
        try #require(parts.count == 2)
        #expect(parts[0].type == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B")  // the ESP
        #expect(parts[1].type == "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")  // the x86-64 root (Discoverable Partitions)
        let fsck = try await Fixtures.run(["e2fsck", "-fn", "\(disk)?offset=\(parts[1].start)"])
        #expect(fsck.status == 0, "e2fsck: \(fsck.stdout)\(fsck.stderr)")
        let fstab = try await Fixtures.run(["debugfs", "-R", "cat /etc/fstab", "\(disk)?offset=\(parts[1].start)"])
        #expect(fstab.stdout.contains("/boot vfat"))
        let cfg = try await Fixtures.run(["mtype", "-i", "\(disk)@@\(parts[0].start)", "::/syslinux/syslinux.cfg"])
        #expect(cfg.stdout.hasPrefix("SERIAL 0 115200"))
        #expect(cfg.stdout.contains("console=ttyS0,115200"))
        let entry = try await Fixtures.run(["mtype", "-i", "\(disk)@@\(parts[0].start)", "::/loader/entries/d2l.conf"])
        #expect(entry.stdout.contains("options root=UUID="))
        try await verifyBoots(disk, expect: "booted (bios: booted, uefi: booted)")
    }

    @Test("a hybrid MBR disk boots under BIOS and UEFI too")
    func hybridMBR() async throws {
        let dir = try Fixtures.scratchDirectory("mbr")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let disk = dir + "/mbr.img"
        let result = try await Fixtures.d2l(
            ["build", try await Fixtures.debianDockerArchive(), "-o", disk, "--partition-table", "mbr", "--root-password-empty", "-q"])
        try #require(result.status == 0, "build failed: \(result.stderr)")
        let parts = try await partitions(disk)
        #expect(parts.map(\.type) == ["e", "83"])
        try await verifyBoots(disk, expect: "booted (bios: booted, uefi: booted)")
    }

    @Test("a KubeVirt containerDisk: podman loads it, /disk/disk.qcow2 belongs to 107, and the disk taken back out boots")
    func containerDisk() async throws {
        let dir = try Fixtures.scratchDirectory("containerdisk")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let archive = dir + "/disk.oci.tar"
        let build = try await Fixtures.d2l(["build", try await Fixtures.debianDockerArchive(), "-o", archive, "--root-password-empty", "-q"])
        try #require(build.status == 0, "build failed: \(build.stderr)")
        let podman = ["podman", "--cgroup-manager", "cgroupfs"]
        let load = try await Fixtures.run(podman + ["load", "-q", "-i", archive])
        try #require(load.status == 0, "podman load: \(load.stderr)")
        let image = try #require(load.stdout.split(separator: " ").last.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) })
        defer { Task { _ = try? await Fixtures.run(podman + ["rmi", "-f", image]) } }
        let create = try await Fixtures.run(podman + ["create", image, "/none"])
        try #require(create.status == 0, "podman create: \(create.stderr)")
        let container = create.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let export = try await Fixtures.run(["sh", "-c", "\"$@\" export \(container) | tar -C \(dir) -xpf -", "sh"] + podman)
        _ = try await Fixtures.run(podman + ["rm", container])
        #expect(export.status == 0, "\(export.stderr)")
        var st = stat()
        #expect(stat(dir + "/disk/disk.qcow2", &st) == 0)
        #expect(st.st_uid == 107 && st.st_gid == 107 && st.st_mode & 0o777 == 0o440)
        try await verifyBoots(dir + "/disk/disk.qcow2", firmware: ["bios"])
    }

    @Test("oci-archive -> qcow2 disk boots to login under UEFI")
    func ociArchiveToQcow2() async throws {
        let dir = try Fixtures.scratchDirectory("oci")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let input = try readableCopy(try await Fixtures.debianOCIArchive(), in: dir)
        let disk = dir + "/linux.qcow2"
        let result = try await Fixtures.d2l(["build", input, "-o", disk, "--root-password-empty", "-q"], asUser: "nobody")
        try #require(result.status == 0, "build failed: \(result.stderr)")
        let info = try await Fixtures.run(["qemu-img", "info", "--output=json", disk])
        #expect(info.stdout.contains("\"format\": \"qcow2\""))
        #expect(try leftovers(in: dir).isEmpty)
        try await verifyBoots(disk, firmware: ["uefi"])
    }

    @Test("same input and SOURCE_DATE_EPOCH give a byte-identical disk, flushed with --sync or not")
    func reproducible() async throws {
        let dir = try Fixtures.scratchDirectory("repro")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let input = try await Fixtures.debianDockerArchive()
        var digests: [String] = []
        for n in 1...2 {
            let disk = dir + "/r\(n).img"
            let r = try await Fixtures.d2l(
                ["build", input, "-o", disk, "-q"] + (n == 2 ? ["--sync"] : []), environment: ["SOURCE_DATE_EPOCH": "1700000000"])
            try #require(r.status == 0, "build failed: \(r.stderr)")
            digests.append(try SHA256Hasher.hex(ofFile: disk))
            try FileManager.default.removeItem(atPath: disk)
        }
        #expect(digests[0] == digests[1])
    }

    @Test("an image without a kernel is refused before any disk is written")
    func refusesImageWithoutKernel() async throws {
        let dir = try Fixtures.scratchDirectory("nokernel")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The minbase userland alone: a valid rootfs tar with an init but no kernel.
        let base = CacheDirectory.path + "/base/debian-bookworm-minbase.tar"
        try #require(FileManager.default.fileExists(atPath: base), "Scripts/make-base leaves \(base)")
        let disk = dir + "/linux.img"
        let r = try await Fixtures.d2l(["build", base, "-o", disk])
        #expect(r.status == 1)
        #expect(r.stderr.contains("no kernel"))
        #expect(r.stderr.contains("linux-image-amd64"))
        #expect(!FileManager.default.fileExists(atPath: disk))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }

    @Test("an existing output is kept without --force")
    func keepsExistingOutput() async throws {
        let dir = try Fixtures.scratchDirectory("force")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let disk = dir + "/linux.img"
        try Data("precious".utf8).write(to: URL(fileURLWithPath: disk))
        let r = try await Fixtures.d2l(["build", try await Fixtures.debianDockerArchive(), "-o", disk])
        #expect(r.status == 1)
        #expect(r.stderr.contains("--force"))
        #expect(try String(contentsOfFile: disk, encoding: .utf8) == "precious")
    }

    @Test("an interrupted build leaves neither a partial image nor temporary files")
    func interruptLeavesNothing() async throws {
        let dir = try Fixtures.scratchDirectory("interrupt")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Fixtures.d2lBinary())
        process.arguments = ["build", try await Fixtures.debianDockerArchive(), "-o", dir + "/linux.img"]
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // Wait until the temporary image exists, then interrupt.
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, (try? leftovers(in: dir))?.isEmpty != false { usleep(20_000) }
        #expect(try !leftovers(in: dir).isEmpty, "the build should have started writing")
        kill(process.processIdentifier, SIGINT)
        process.waitUntilExit()
        #expect(process.terminationStatus == 130)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }
}
