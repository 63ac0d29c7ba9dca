import Foundation
import Testing

/// arm64 on this amd64 host: the debian-bookworm-arm64 recipe (built under qemu-user-static), a
/// multi-platform OCI index of it and the amd64 recipe from which `--platform` builds either disk, both
/// booting; and the arm64 kernel booted directly, with its identity checked.
@Suite(.serialized) struct Arm64Tests {
    static let podman = ["podman", "--cgroup-manager", "cgroupfs"]

    /// The recipe's docker-archive, built (or taken from the cache) by Scripts/build-recipe.
    static func recipe(_ name: String) async throws -> String {
        let result = try await Fixtures.run([Fixtures.repositoryRoot + "/Scripts/build-recipe", name])
        try #require(result.status == 0, "Scripts/build-recipe \(name): \(result.stderr)")
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The recipe's image in podman's storage (loaded from its archive when the cache was built elsewhere).
    static func imageInPodman(_ name: String) async throws -> String {
        let archive = name == "debian-bookworm" ? try await Fixtures.debianDockerArchive() : try await recipe(name)
        let tag = "localhost/d2l/\(name):latest"
        if try await Fixtures.run(podman + ["image", "exists", tag]).status != 0 {
            let load = try await Fixtures.run(podman + ["load", "-q", "-i", archive])
            try #require(load.status == 0, "podman load \(archive): \(load.stderr)")
        }
        return tag
    }

    /// The first file of `folder` in a root file system tar whose name starts with `prefix`, extracted into `dir`.
    static func extract(_ prefix: String, from exportTar: String, into dir: String) async throws -> String {
        let listing = try await Fixtures.run(["tar", "-tf", exportTar])
        let member = try #require(
            listing.stdout.split(separator: "\n").map(String.init).first {
                ($0.hasPrefix("boot/") || $0.hasPrefix("./boot/")) && ($0 as NSString).lastPathComponent.hasPrefix(prefix)
            }, "no \(prefix)* in \(exportTar)")
        let result = try await Fixtures.run(["tar", "-C", dir, "-xf", exportTar, member])
        try #require(result.status == 0, "\(result.stderr)")
        return dir + "/" + member
    }

    @Test(
        "a multi-platform OCI index (podman manifest) builds the amd64 or the arm64 disk by --platform, and both boot",
        .timeLimit(.minutes(20)))
    func multiPlatformIndex() async throws {
        let dir = try Fixtures.scratchDirectory("arm64-index")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let amd64 = try await Self.imageInPodman("debian-bookworm")
        let arm64 = try await Self.imageInPodman("debian-bookworm-arm64")
        let list = "localhost/d2l-it/multi-\(getpid())"
        #expect(try await Fixtures.run(Self.podman + ["manifest", "create", list]).status == 0)
        defer { Task { _ = try? await Fixtures.run(Self.podman + ["manifest", "rm", list]) } }
        for image in [amd64, arm64] {
            let add = try await Fixtures.run(Self.podman + ["manifest", "add", list, "containers-storage:" + image])
            try #require(add.status == 0, "podman manifest add \(image): \(add.stderr)")
        }
        let index = dir + "/multi.oci.tar"
        let push = try await Fixtures.run(
            Self.podman + ["manifest", "push", "--all", "--format", "oci", list, "oci-archive:" + index])
        try #require(push.status == 0, "podman manifest push: \(push.stderr)")

        let before = Fixtures.orphanedQEMUProcesses()
        for (platform, firmware, machine) in [("linux/arm64", "uefi", "arm64"), ("linux/amd64", "uefi", "amd64")] {
            let disk = dir + "/\(machine).img"
            let build = try await Fixtures.d2l(["build", index, "--platform", platform, "-o", disk, "--root-password-empty"])
            #expect(build.status == 0, "\(platform): \(build.stderr)")
            let verify = try await Fixtures.d2l([
                "verify", disk, "--firmware", firmware, "--login", "root", "--run", "uname -m", "--expect-output",
                machine == "arm64" ? "^aarch64" : "^x86_64", "--timeout", "600",
            ])
            #expect(verify.status == 0, "\(platform): \(verify.stdout)\n\(verify.stderr)")
            #expect(verify.stderr.contains("\(disk): \(machine),"), "\(verify.stderr)")
        }
        // The index has no s390x image: the error lists what it has.
        let missing = try await Fixtures.d2l(["build", index, "--platform", "linux/s390x", "-o", dir + "/s390x.img"])
        #expect(missing.status == 1 && missing.stderr.contains("linux/amd64") && missing.stderr.contains("linux/arm64"))
        #expect(Fixtures.orphanedQEMUProcesses().subtracting(before).isEmpty)
    }

    @Test(
        "an arm64 kernel Image boots the arm64 disk directly, its banner checked; an amd64 kernel is refused for it",
        .timeLimit(.minutes(15)))
    func arm64DirectKernelBoot() async throws {
        let dir = try Fixtures.scratchDirectory("arm64-kernel")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let archive = try await Self.recipe("debian-bookworm-arm64")
        let disk = dir + "/arm64.img"
        let build = try await Fixtures.d2l(["build", archive, "-o", disk, "--root-password-empty", "-q"])
        try #require(build.status == 0, "\(build.stderr)")
        let export = String(archive.dropLast(".docker.tar".count)) + ".export.tar"
        let kernel = try await Self.extract("vmlinuz-", from: export, into: dir)
        let initrd = try await Self.extract("initrd.img-", from: export, into: dir)
        let verify = try await Fixtures.d2l(["verify", disk, "--kernel", kernel, "--initrd", initrd, "--timeout", "600"])
        #expect(verify.status == 0, "\(verify.stdout)\n\(verify.stderr)")
        #expect(verify.stderr.contains("console=ttyAMA0,115200") && verify.stderr.contains("cloud-arm64 (debian-kernel@"))

        let amd64Export = String(try await Fixtures.debianDockerArchive().dropLast(".docker.tar".count)) + ".export.tar"
        let amd64Kernel = try await Self.extract("vmlinuz-", from: amd64Export, into: dir)
        let mixed = try await Fixtures.d2l(["verify", disk, "--kernel", amd64Kernel])
        #expect(mixed.status == 125, "\(mixed.stderr)")
        #expect(mixed.stderr.contains("is an amd64 kernel and the disk's userland is arm64"), "\(mixed.stderr)")
    }
}
