import Foundation
import Testing

/// Real Debian kernels and initrds, taken from the recipes' exported root file systems and cached
/// in ~/.cache/d2l/kernels/SUITE (re-extracted when the recipe is rebuilt).
enum KernelFixtures {
    struct Kernel {
        var suite: String
        var kernel: String
        var initrd: String
        /// `uname -r`, from the file name (`vmlinuz-RELEASE`).
        var release: String
    }

    static let cacheRoot: String = {
        let environment = ProcessInfo.processInfo.environment
        let base = environment["D2L_CACHE"]
            ?? (environment["XDG_CACHE_HOME"] ?? (NSHomeDirectory() + "/.cache")) + "/d2l"
        return base + "/kernels"
    }()

    private static let builds = KernelBuilds()

    /// The kernel and initrd of the Debian SUITE recipe (Images/debian-SUITE): bullseye, bookworm or trixie.
    static func debian(_ suite: String) async throws -> Kernel {
        try await builds.once(suite) {
            let recipe = "debian-\(suite)"
            let result = try await Fixtures.run([Fixtures.repositoryRoot + "/Scripts/build-recipe", recipe])
            guard result.status == 0 else { throw FixtureError("Scripts/build-recipe \(recipe) failed:\n\(result.stderr)") }
            let docker = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let exported = String(docker.dropLast(".docker.tar".count)) + ".export.tar"
            let stamp = (try? String(contentsOfFile: String(docker.dropLast(".docker.tar".count)) + ".stamp", encoding: .utf8))?
                .trimmingCharacters(in: .whitespacesAndNewlines) ?? "unknown"
            let directory = cacheRoot + "/" + suite
            if let cached = try? find(in: directory + "/boot", suite: suite),
                (try? String(contentsOfFile: directory + "/stamp", encoding: .utf8)) == stamp
            {
                return cached
            }
            // Extract beside, then swap in, so a half-extracted kernel is never used.
            let fresh = directory + ".new-\(getpid())"
            try? FileManager.default.removeItem(atPath: fresh)
            try FileManager.default.createDirectory(atPath: fresh, withIntermediateDirectories: true)
            let tar = try await Fixtures.run([
                "tar", "-xf", exported, "-C", fresh, "--wildcards", "--no-same-owner",
                "boot/vmlinuz-*", "boot/initrd.img-*",
            ])
            guard tar.status == 0 else { throw FixtureError("tar on \(exported) failed:\n\(tar.stderr)") }
            try stamp.write(toFile: fresh + "/stamp", atomically: true, encoding: .utf8)
            try? FileManager.default.removeItem(atPath: directory)
            try FileManager.default.moveItem(atPath: fresh, toPath: directory)
            return try find(in: directory + "/boot", suite: suite)
        }
    }

    private static func find(in boot: String, suite: String) throws -> Kernel {
        let names = try FileManager.default.contentsOfDirectory(atPath: boot).sorted()
        guard let kernel = names.last(where: { $0.hasPrefix("vmlinuz-") }) else {
            throw FixtureError("no vmlinuz-* in \(boot)")
        }
        let release = String(kernel.dropFirst("vmlinuz-".count))
        let initrd = "initrd.img-" + release
        guard names.contains(initrd) else { throw FixtureError("no \(initrd) beside \(kernel) in \(boot)") }
        return Kernel(suite: suite, kernel: boot + "/" + kernel, initrd: boot + "/" + initrd, release: release)
    }

    /// Random bytes where an initrd should be: the kernel panics at once, unable to mount its root.
    static func garbageInitrd(at path: String) async throws {
        var bytes = [UInt8](repeating: 0, count: 64 * 1024)
        for index in bytes.indices { bytes[index] = UInt8.random(in: 0...255) }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// A copy of `kernel` whose header version string has one character changed: what a stale bzImage looks like
    /// to the check (the header says one build, the kernel that runs prints another).
    static func staleCopy(of kernel: String, to path: String) async throws {
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: kernel)))
        let pointer = Int(bytes[0x20E]) | Int(bytes[0x20F]) << 8
        let offset = pointer + 0x200
        guard let hash = bytes[offset...].prefix(512).firstIndex(of: UInt8(ascii: "#")), hash + 1 < bytes.count else {
            throw FixtureError("\(kernel): no build number in the header version string")
        }
        bytes[hash + 1] = bytes[hash + 1] == UInt8(ascii: "9") ? UInt8(ascii: "8") : UInt8(ascii: "9")
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// A linux-image .deb holding `kernel` as boot/vmlinuz-RELEASE (and a module, so data.tar is not all kernel),
    /// made with dpkg-deb like Debian's own.
    static func linuxImagePackage(_ kernel: Kernel, at path: String) async throws {
        let root = path + ".root"
        try? FileManager.default.removeItem(atPath: root)
        try FileManager.default.createDirectory(atPath: root + "/DEBIAN", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/boot", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(
            atPath: root + "/lib/modules/\(kernel.release)/kernel", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: kernel.kernel, toPath: root + "/boot/vmlinuz-\(kernel.release)")
        try "not a module\n".write(toFile: root + "/lib/modules/\(kernel.release)/kernel/x.ko", atomically: true, encoding: .utf8)
        let control = """
            Package: linux-image-\(kernel.release)
            Version: 1
            Architecture: amd64
            Maintainer: d2l <d2l@example.org>
            Description: \(kernel.suite) kernel for d2l tests

            """
        try control.write(toFile: root + "/DEBIAN/control", atomically: true, encoding: .utf8)
        let result = try await Fixtures.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, path])
        guard result.status == 0 else { throw FixtureError("dpkg-deb failed:\n\(result.stderr)") }
        try? FileManager.default.removeItem(atPath: root)
    }

    /// A linux-image .deb as Debian ships it, with the SUITE recipe's real kernel, config and modules (no initrd:
    /// Debian makes that on the installed system), packed with dpkg-deb.
    static func realLinuxImagePackage(_ suite: String, at path: String) async throws -> Kernel {
        let kernel = try await debian(suite)
        let recipe = try await Fixtures.run([Fixtures.repositoryRoot + "/Scripts/build-recipe", "debian-\(suite)"])
        guard recipe.status == 0 else { throw FixtureError("Scripts/build-recipe debian-\(suite) failed:\n\(recipe.stderr)") }
        let exported = String(recipe.stdout.trimmingCharacters(in: .whitespacesAndNewlines).dropLast(".docker.tar".count)) + ".export.tar"
        let root = path + ".root"
        try? FileManager.default.removeItem(atPath: root)
        try FileManager.default.createDirectory(atPath: root + "/DEBIAN", withIntermediateDirectories: true)
        let tar = try await Fixtures.run([
            "tar", "-xf", exported, "-C", root, "--no-same-owner", "--wildcards", "--no-wildcards-match-slash",
            "boot/vmlinuz-\(kernel.release)", "boot/config-\(kernel.release)", "usr/lib/modules/\(kernel.release)",
        ])
        guard tar.status == 0 else { throw FixtureError("tar on \(exported) failed:\n\(tar.stderr)") }
        // depmod's indexes are made by the package's postinst, not shipped.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: root + "/usr/lib/modules/\(kernel.release)")) ?? []
        where name.hasPrefix("modules.") && name != "modules.order" && name != "modules.builtin" && name != "modules.builtin.modinfo" {
            try FileManager.default.removeItem(atPath: root + "/usr/lib/modules/\(kernel.release)/" + name)
        }
        let control = """
            Package: linux-image-\(kernel.release)
            Version: 1
            Architecture: amd64
            Maintainer: d2l <d2l@example.org>
            Description: \(suite) kernel for d2l tests, with its modules

            """
        try control.write(toFile: root + "/DEBIAN/control", atomically: true, encoding: .utf8)
        let result = try await Fixtures.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", root, path])
        guard result.status == 0 else { throw FixtureError("dpkg-deb failed:\n\(result.stderr)") }
        try? FileManager.default.removeItem(atPath: root)
        return kernel
    }

    static func ceilLog2(_ n: Int) -> Int { Int(ceil(log2(Double(n)))) }
}

/// Runs each suite's kernel extraction once at a time (tests may ask for the same suite together).
actor KernelBuilds {
    private var running: [String: Task<KernelFixtures.Kernel, any Error>] = [:]

    func once(_ suite: String, _ work: @escaping @Sendable () async throws -> KernelFixtures.Kernel) async throws
        -> KernelFixtures.Kernel
    {
        if let task = running[suite], let kernel = try? await task.value { return kernel }
        let task = Task { try await work() }
        running[suite] = task
        return try await task.value
    }
}
