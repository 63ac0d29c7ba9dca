import D2LSupport
import Foundation
import Testing

/// Real direct kernel boots: Debian's bullseye, bookworm and trixie kernels booting the bookworm disk's
/// root file system, `d2l bisect`, and `git bisect run d2l verify`. TCG here: 20-35 s to login per boot.
@Suite(.serialized) struct KernelBootTests {
    struct Report: Decodable {
        struct Stage: Decodable {
            var name: String
            var reached: Bool
        }
        struct Command: Decodable {
            var output: String
            var passed: Bool
        }
        var passed: Bool
        var kernelVersion: String?
        var stages: [Stage]
        var failedStage: String?
        var reason: String?
        var commands: [Command]
    }


    /// What `d2l bisect --json` prints.
    struct BisectSummary: Decodable {
        struct Kernel: Decodable {
            var name: String
            var initrd: String?
            var initrdSource: String
        }
        var exact: Bool
        var firstBad: Kernel
        var lastGood: Kernel
        var firstBadTranscript: String?
        var lastGoodTranscript: String?
        var boots: Int
        var endBoots: Int
    }

    static func verify(_ arguments: [String]) async throws -> (status: Int32, report: Report?, stderr: String) {
        let before = Fixtures.orphanedQEMUProcesses()
        let result = try await Fixtures.d2l(["verify"] + arguments)
        // The domain goes down right after the verdict; give QEMU a moment to exit.
        var leftover = Fixtures.orphanedQEMUProcesses().subtracting(before)
        for _ in 0..<20 where !leftover.isEmpty {
            usleep(250_000)
            leftover = Fixtures.orphanedQEMUProcesses().subtracting(before)
        }
        #expect(leftover.isEmpty, "QEMU processes left running: \(leftover)")
        return (result.status, try? JSONDecoder().decode(Report.self, from: Data(result.stdout.utf8)), result.stderr)
    }

    @Test(.timeLimit(.minutes(10)), arguments: ["bullseye", "bookworm", "trixie"])
    func debianKernelBootsTheBookwormRootFileSystem(suite: String) async throws {
        let kernel = try await KernelFixtures.debian(suite)
        let disk = try await Fixtures.debianDisk()
        let (status, report, stderr) = try await Self.verify([
            disk, "--kernel", kernel.kernel, "--initrd", kernel.initrd, "--timeout", "900",
            "--login", "root", "--run", "uname -r", "--expect-output", "^" + NSRegularExpression.escapedPattern(for: kernel.release) + "$",
            "--json",
        ])
        #expect(status == 0, "\(stderr)")
        let parsed = try #require(report, "no JSON report; stderr:\n\(stderr)")
        // No bootloader ran: QEMU loaded the kernel itself.
        #expect(parsed.stages.map(\.name) == ["kernel", "init", "login"])
        #expect(parsed.stages.allSatisfy { $0.reached })
        #expect(parsed.kernelVersion == kernel.release)
        // The kernel that ran is the one given, seen from inside the guest too.
        #expect(parsed.commands.first?.passed == true)
        #expect(parsed.commands.first?.output.contains(kernel.release) == true)
        #expect(stderr.contains("initrd \(kernel.initrd)"))
    }

    @Test(.timeLimit(.minutes(10))) func staleKernelFailsAtTheKernelStage() async throws {
        let kernel = try await KernelFixtures.debian("trixie")
        let disk = try await Fixtures.debianDisk()
        let dir = try Fixtures.scratchDirectory("kernel-stale")
        let stale = dir + "/bzImage"
        try await KernelFixtures.staleCopy(of: kernel.kernel, to: stale)
        let (status, report, stderr) = try await Self.verify([disk, "--kernel", stale, "--initrd", kernel.initrd, "--json"])
        #expect(status == 1, "\(stderr)")
        let parsed = try #require(report, "no JSON report; stderr:\n\(stderr)")
        #expect(parsed.failedStage == "kernel")
        #expect(parsed.reason?.hasPrefix("another kernel booted") == true)
        #expect(parsed.stages.allSatisfy { !$0.reached })
    }

    @Test func whatIsNotAVerdictOnTheKernelIsSkipped() async throws {
        let disk = try await Fixtures.debianDisk()
        let dir = try Fixtures.scratchDirectory("kernel-skip")
        let truncated = dir + "/bzImage"
        _ = FileManager.default.createFile(atPath: truncated, contents: Data("#!/bin/sh\nnot a kernel\n".utf8))
        let notKernel = try await Self.verify([disk, "--kernel", truncated])
        #expect(notKernel.status == 125)
        #expect(notKernel.stderr.contains("not an x86 bzImage") || notKernel.stderr.contains("too short"))
        let missing = try await Self.verify([disk, "--kernel", dir + "/missing"])
        #expect(missing.status == 125)
        #expect(missing.stderr.contains("does not exist"))
        let kernel = try await KernelFixtures.debian("bookworm")
        let noInitrd = try await Self.verify([disk, "--kernel", kernel.kernel, "--initrd", dir + "/missing.img"])
        #expect(noInitrd.status == 125)
        let appendAlone = try await Self.verify([disk, "--append", "quiet"])
        #expect(appendAlone.status == 125)
        #expect(appendAlone.stderr.contains("need --kernel"))
    }

    /// Five kernels, the fourth and fifth booting with a garbage initrd: d2l bisect names the fourth.
    /// The third is a linux-image .deb, with its initrd beside it.
    @Test(.timeLimit(.minutes(15))) func bisectNamesTheFirstBadKernelInCeilLog2Boots() async throws {
        let disk = try await Fixtures.debianDisk()
        let dir = try Fixtures.scratchDirectory("kernel-bisect")
        let kernels = dir + "/kernels"
        try FileManager.default.createDirectory(atPath: kernels, withIntermediateDirectories: true)
        let bullseye = try await KernelFixtures.debian("bullseye")
        let bookworm = try await KernelFixtures.debian("bookworm")
        let trixie = try await KernelFixtures.debian("trixie")
        let list: [(String, KernelFixtures.Kernel, Bool)] = [
            ("1-bullseye", bullseye, true), ("2-bookworm", bookworm, true), ("3-trixie", trixie, true),
            ("4-trixie", trixie, false), ("5-trixie", trixie, false),
        ]
        for (name, kernel, good) in list where name == "3-trixie" {
            try await KernelFixtures.linuxImagePackage(kernel, at: "\(kernels)/linux-image-\(name).deb")
            try FileManager.default.createSymbolicLink(
                atPath: "\(kernels)/initrd.img-\(kernel.release)", withDestinationPath: kernel.initrd)
            #expect(good)
        }
        for (name, kernel, good) in list where name != "3-trixie" {
            try FileManager.default.createSymbolicLink(atPath: "\(kernels)/vmlinuz-\(name)", withDestinationPath: kernel.kernel)
            if good {
                try FileManager.default.createSymbolicLink(
                    atPath: "\(kernels)/initrd.img-\(name)", withDestinationPath: kernel.initrd)
            } else {
                try await KernelFixtures.garbageInitrd(at: "\(kernels)/initrd.img-\(name)")
            }
        }
        let state = dir + "/bisect.json"
        let arguments = [
            // By version: 5.10, 6.1, then the three 6.12 kernels by name (the .deb's first).
            "bisect", "--image", disk, "--kernels", kernels,
            "--good", "vmlinuz-1-bullseye", "--bad", "vmlinuz-5-trixie", "--state", state, "--json",
        ]
        let before = Fixtures.orphanedQEMUProcesses()
        let start = Date()
        let result = try await Fixtures.d2l(arguments)
        let wall = Date().timeIntervalSince(start)
        #expect(Fixtures.orphanedQEMUProcesses().subtracting(before).isEmpty)
        #expect(result.status == 0, "\(result.stderr)")
        let summary = try #require(try? JSONDecoder().decode(BisectSummary.self, from: Data(result.stdout.utf8)), "\(result.stderr)")
        #expect(summary.exact)
        #expect(summary.firstBad.name == "vmlinuz-4-trixie")
        #expect(summary.lastGood.name == "linux-image-3-trixie.deb")
        #expect(summary.boots <= KernelFixtures.ceilLog2(list.count))
        // Every step is logged with its verdict and the stage it reached, and each initrd's origin is said.
        #expect(result.stderr.contains("vmlinuz-4-trixie: bad, reached kernel"))
        #expect(result.stderr.contains("beside the kernel"))
        #expect(result.stderr.contains("initrd.img-\(trixie.release) (beside the .deb)"))
        let badTranscript = try String(contentsOfFile: try #require(summary.firstBadTranscript), encoding: .utf8)
        #expect(badTranscript.contains("Kernel panic - not syncing"))
        let goodTranscript = try String(contentsOfFile: try #require(summary.lastGoodTranscript), encoding: .utf8)
        #expect(goodTranscript.contains("login:"))

        // Run again: the state file already holds every step; nothing boots.
        let again = try await Fixtures.d2l(arguments)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(again.stderr.contains("resuming from"))
        #expect(!again.stderr.contains("booting ["))
        let summary2 = try #require(try? JSONDecoder().decode(BisectSummary.self, from: Data(again.stdout.utf8)))
        #expect(summary2.firstBad.name == "vmlinuz-4-trixie")
        print("d2l bisect: \(summary.boots) boots in \(String(format: "%.1f", wall)) s")
    }

    /// A linux-image .deb with no initrd anywhere boots with one that the image's own mkinitramfs makes, with the
    /// .deb's modules; the --bad end, never booted by the search, is booted at the end for its transcript.
    @Test(.timeLimit(.minutes(15))) func debWithoutInitrdBootsWithOneMadeByTheImagesOwnTools() async throws {
        let disk = try await Fixtures.debianDisk()
        let dir = try Fixtures.scratchDirectory("kernel-make-initrd")
        let bullseye = try await KernelFixtures.debian("bullseye")
        let bookworm = try await KernelFixtures.debian("bookworm")
        let package = dir + "/linux-image-trixie.deb"
        let trixie = try await KernelFixtures.realLinuxImagePackage("trixie", at: package)
        try FileManager.default.createSymbolicLink(atPath: dir + "/vmlinuz-1-bullseye", withDestinationPath: bullseye.kernel)
        try FileManager.default.createSymbolicLink(atPath: dir + "/initrd.img-1-bullseye", withDestinationPath: bullseye.initrd)
        try FileManager.default.createSymbolicLink(atPath: dir + "/vmlinuz-3-bookworm", withDestinationPath: bookworm.kernel)
        try await KernelFixtures.garbageInitrd(at: dir + "/initrd.img-3-bookworm")
        let state = dir + "/bisect.json"
        let before = Fixtures.orphanedQEMUProcesses()
        let result = try await Fixtures.d2l([
            "bisect", "--image", disk, "--order", "given", "--good", dir + "/vmlinuz-1-bullseye",
            "--bad", dir + "/vmlinuz-3-bookworm", package, "--state", state, "--json",
        ])
        #expect(Fixtures.orphanedQEMUProcesses().subtracting(before).isEmpty)
        #expect(result.status == 0, "\(result.stderr)")
        let summary = try #require(try? JSONDecoder().decode(BisectSummary.self, from: Data(result.stdout.utf8)), "\(result.stderr)")
        #expect(summary.exact)
        #expect(summary.lastGood.name == package)
        #expect(summary.firstBad.name == dir + "/vmlinuz-3-bookworm")
        // The log says where the initrd came from and how it was made.
        #expect(summary.lastGood.initrdSource.contains("image's initramfs tools"))
        #expect(result.stderr.contains("initrd for \(trixie.release): modules from linux-image-trixie.deb"))
        #expect(result.stderr.contains("running the image's mkinitramfs"))
        let initrd = try #require(summary.lastGood.initrd)
        let size = try FileManager.default.attributesOfItem(atPath: initrd)[.size] as? Int ?? 0
        #expect(size > 1 << 20, "initrd \(initrd): \(size) bytes")
        // The trixie kernel, with the initrd made by bookworm's tools, reached the login prompt.
        let good = try String(contentsOfFile: try #require(summary.lastGoodTranscript), encoding: .utf8)
        #expect(good.contains("Linux version \(trixie.release)"))
        #expect(good.contains("login:"))
        // One search boot; the --bad end was booted once more for its transcript.
        #expect(summary.boots == 1)
        #expect(summary.endBoots == 1)
        let bad = try String(contentsOfFile: try #require(summary.firstBadTranscript), encoding: .utf8)
        #expect(bad.contains("Kernel panic - not syncing"))
        // The copy of the root file system the tools ran in is gone.
        #expect(!FileManager.default.fileExists(atPath: state + ".initramfs-root"))
    }

    /// `git bisect run d2l verify` over commits that each select a kernel; one names a file that is not a bzImage.
    @Test(.timeLimit(.minutes(15))) func gitBisectRunEndsOnTheRightCommitAndSkipsTheUnreadableKernel() async throws {
        let disk = try await Fixtures.debianDisk()
        let dir = try Fixtures.scratchDirectory("kernel-git-bisect")
        let bookworm = try await KernelFixtures.debian("bookworm")
        let trixie = try await KernelFixtures.debian("trixie")
        let garbage = dir + "/garbage.initrd"
        try await KernelFixtures.garbageInitrd(at: garbage)
        let truncated = dir + "/truncated-bzImage"
        try Data(try Data(contentsOf: URL(fileURLWithPath: trixie.kernel)).prefix(300)).write(to: URL(fileURLWithPath: truncated))
        let repo = dir + "/repo"
        try FileManager.default.createDirectory(atPath: repo, withIntermediateDirectories: true)
        func git(_ arguments: String...) async throws -> String {
            let result = try await Fixtures.run(["git", "-C", repo] + arguments, environment: [
                "GIT_AUTHOR_NAME": "d2l", "GIT_AUTHOR_EMAIL": "d2l@example.org",
                "GIT_COMMITTER_NAME": "d2l", "GIT_COMMITTER_EMAIL": "d2l@example.org",
            ])
            guard result.status == 0 else { throw FixtureError("git \(arguments.joined(separator: " ")):\n\(result.stderr)") }
            return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        _ = try await git("init", "-q")
        // c0 and c1 boot, c2's kernel is not a bzImage (a broken build), c3 boots, c4 and c5 panic.
        let commits: [(String, String, String)] = [
            ("c0 bookworm", bookworm.kernel, bookworm.initrd), ("c1 trixie", trixie.kernel, trixie.initrd),
            ("c2 truncated kernel", truncated, trixie.initrd), ("c3 bookworm", bookworm.kernel, bookworm.initrd),
            ("c4 trixie, initrd garbage", trixie.kernel, garbage), ("c5 bookworm, initrd garbage", bookworm.kernel, garbage),
        ]
        var hashes: [String] = []
        for (message, kernel, initrd) in commits {
            try "\(kernel)\n".write(toFile: repo + "/kernel", atomically: true, encoding: .utf8)
            try "\(initrd)\n".write(toFile: repo + "/initrd", atomically: true, encoding: .utf8)
            _ = try await git("add", "kernel", "initrd")
            _ = try await git("commit", "-q", "-m", message)
            hashes.append(try await git("rev-parse", "HEAD"))
        }
        _ = try await git("bisect", "start", hashes[5], hashes[0])
        let start = Date()
        let run = try await Fixtures.run(
            ["git", "-C", repo, "bisect", "run", "sh", "-c",
             #"exec "$D2L" verify "$DISK" --kernel "$(cat kernel)" --initrd "$(cat initrd)" --timeout 900"#],
            environment: ["D2L": try Fixtures.d2lBinary(), "DISK": disk])
        let wall = Date().timeIntervalSince(start)
        let log = try await git("bisect", "log")
        _ = try await git("bisect", "reset")
        #expect(run.stdout.contains("\(hashes[4]) is the first bad commit"), "\(run.stdout)\n\(run.stderr)")
        // The truncated kernel exited 125: skipped, never called good or bad.
        #expect(log.contains("git bisect skip \(hashes[2])"), "\(log)")
        #expect(!log.contains("git bisect bad \(hashes[2])") && !log.contains("git bisect good \(hashes[2])"))
        print("git bisect run: \(String(format: "%.1f", wall)) s\n\(log)")
    }
}
