import D2LVerify
import Foundation
import Testing

@testable import D2LBisect

/// A bzImage's setup header whose version pointer (0x20E) names `version`: enough for KernelImage.
func bzImageHeader(version: String) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: 0x4000)
    bytes[0x1FE] = 0x55
    bytes[0x1FF] = 0xAA
    bytes.replaceSubrange(0x202..<0x206, with: Array("HdrS".utf8))
    bytes[0x206] = 0x0F
    bytes[0x207] = 0x02
    bytes.replaceSubrange(0x3000..<0x3000 + version.utf8.count, with: Array(version.utf8))
    bytes[0x20E] = 0x00
    bytes[0x20F] = 0x2E  // 0x3000 - 0x200
    return bytes
}

let bookwormVersion = "6.1.0-50-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)"

/// Kernels k0...k(n-1) whose releases sort in list order.
func fakeKernels(_ count: Int) -> [BisectKernel] {
    (0..<count).map {
        BisectKernel(
            name: "k\($0)", kernel: "/kernels/vmlinuz-6.\($0)", initrd: nil, initrdSource: "none", release: "6.\($0).0",
            versionString: "6.\($0).0 (t@h) #1")
    }
}

/// A verdict function that counts its boots: kernels from `firstBad` on fail, `skip` cannot be tested,
/// and `flaky` fail their first `flakyFailures` boots.
final class FakeJudge: @unchecked Sendable {
    let firstBad: Int
    let skip: Set<Int>
    let flaky: Set<Int>
    let flakyFailures: Int
    private let lock = NSLock()
    private var _booted: [Int] = []

    init(firstBad: Int, skip: Set<Int> = [], flaky: Set<Int> = [], flakyFailures: Int = 1) {
        self.firstBad = firstBad
        self.skip = skip
        self.flaky = flaky
        self.flakyFailures = flakyFailures
    }

    var booted: [Int] { lock.withLock { _booted } }

    func verdict(_ kernel: BisectKernel, _ index: Int, _ attempt: Int) -> BootAttempt {
        lock.withLock { _booted.append(index) }
        if skip.contains(index) { return BootAttempt(verdict: .skip, reason: "libvirt said no") }
        if flaky.contains(index), attempt <= flakyFailures {
            return BootAttempt(verdict: .bad, stageReached: "kernel", reason: "deadline", transcript: "/t/\(index)-\(attempt)")
        }
        if index >= firstBad {
            return BootAttempt(verdict: .bad, stageReached: "kernel", reason: "kernel panic", transcript: "/t/\(index)")
        }
        return BootAttempt(verdict: .good, stageReached: "login", transcript: "/t/\(index)")
    }

    var bisector: KernelBisector { bisector(stateFile: nil) }

    func bisector(stateFile: String?) -> KernelBisector {
        KernelBisector(stateFile: stateFile) { kernel, index, attempt in self.verdict(kernel, index, attempt) }
    }
}

func ceilLog2(_ n: Int) -> Int { Int(ceil(log2(Double(n)))) }

@Suite struct KernelBisectorTests {
    @Test(arguments: [2, 3, 4, 5, 6, 9, 16, 17, 33])
    func namesTheFirstBadInCeilLog2Boots(count: Int) async throws {
        for firstBad in 1..<count {
            let judge = FakeJudge(firstBad: firstBad)
            let state = BisectState(image: "/d.img", kernels: fakeKernels(count), good: 0, bad: count - 1, retries: 0)
            let result = try await judge.bisector.run(state)
            #expect(result.firstBad.name == "k\(firstBad)", "n=\(count)")
            #expect(result.lastGood.name == "k\(firstBad - 1)")
            #expect(result.isExact)
            #expect(result.boots <= ceilLog2(count), "n=\(count) first bad \(firstBad): \(judge.booted)")
            #expect(result.boots <= KernelBisector.maximumSteps(kernels: count))
            // The ends were given, never booted.
            #expect(!judge.booted.contains(0) && !judge.booted.contains(count - 1))
        }
    }

    @Test func transcriptsOfBothEndsComeFromTheirBoots() async throws {
        let judge = FakeJudge(firstBad: 3)
        let state = BisectState(image: "/d.img", kernels: fakeKernels(6), good: 0, bad: 5, retries: 0)
        let result = try await judge.bisector.run(state)
        #expect(result.firstBadTranscript == "/t/3")
        #expect(result.lastGoodTranscript == "/t/2")
        #expect(result.firstBadStep?.deciding?.reason == "kernel panic")
    }

    @Test func skippedKernelIsNeverBlamedAndTheSearchGoesAroundIt() async throws {
        // k3 cannot be tested; the first bad is k4: k3 is then one of the possible first bad kernels.
        let judge = FakeJudge(firstBad: 4, skip: [3])
        let state = BisectState(image: "/d.img", kernels: fakeKernels(6), good: 0, bad: 5, retries: 0)
        let result = try await judge.bisector.run(state)
        #expect(!result.isExact)
        #expect(result.possiblyFirstBad.map(\.name) == ["k3", "k4"])
        #expect(result.firstBad.name == "k4")
        #expect(result.lastGood.name == "k2")
        // A skipped kernel outside the final range does not matter.
        let judge2 = FakeJudge(firstBad: 2, skip: [3])
        let result2 = try await judge2.bisector.run(
            BisectState(image: "/d.img", kernels: fakeKernels(6), good: 0, bad: 5, retries: 0))
        #expect(result2.isExact)
        #expect(result2.firstBad.name == "k2")
        #expect(judge2.booted.filter { $0 == 3 }.count <= 1)
    }

    @Test func retriesKeepAFlakyBootFromMakingAGoodKernelBad() async throws {
        // k2 is good but fails its first boot.
        let flaky = FakeJudge(firstBad: 3, flaky: [2])
        let noRetry = try await flaky.bisector.run(
            BisectState(image: "/d.img", kernels: fakeKernels(6), good: 0, bad: 5, retries: 0))
        #expect(noRetry.firstBad.name == "k2")  // fooled, as expected without retries

        let flaky2 = FakeJudge(firstBad: 3, flaky: [2])
        let withRetry = try await flaky2.bisector.run(
            BisectState(image: "/d.img", kernels: fakeKernels(6), good: 0, bad: 5, retries: 1))
        #expect(withRetry.firstBad.name == "k3")
        #expect(flaky2.booted.filter { $0 == 2 }.count == 2)
        // A really bad kernel is booted 1 + retries times.
        #expect(flaky2.booted.filter { $0 == 3 }.count == 2)
    }

    @Test func resumesFromTheStateFileWithoutBootingAgain() async throws {
        let file = NSTemporaryDirectory() + "d2l-bisect-state-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).json"
        defer { try? FileManager.default.removeItem(atPath: file) }
        let kernels = fakeKernels(9)
        let fresh = BisectState(image: "/d.img", kernels: kernels, good: 0, bad: 8, retries: 0)

        // Interrupted after its first step: the judge cancels the task during the second boot.
        let first = FakeJudge(firstBad: 6)
        let task = Task {
            let bisector = KernelBisector(stateFile: file) { kernel, index, attempt in
                if first.booted.count == 1 { withUnsafeCurrentTask { $0?.cancel() } }
                return first.verdict(kernel, index, attempt)
            }
            return try await bisector.run(try bisector.start(fresh))
        }
        await #expect(throws: CancellationError.self) { try await task.value }
        let saved = try JSONDecoder().decode(BisectState.self, from: Data(contentsOf: URL(fileURLWithPath: file)))
        #expect(saved.steps.count == 1)
        #expect(saved.steps[0].index == 4)

        let second = FakeJudge(firstBad: 6)
        let bisector = second.bisector(stateFile: file)
        let resumed = try bisector.start(fresh)
        #expect(resumed.steps.count == 1)
        let result = try await bisector.run(resumed)
        #expect(result.firstBad.name == "k6")
        #expect(!second.booted.contains(4))
        #expect(first.booted.count + second.booted.count - 1 <= ceilLog2(9))

        // Run again: the state already holds the answer, and nothing boots.
        let third = FakeJudge(firstBad: 6)
        let again = try await third.bisector(stateFile: file).run(try third.bisector(stateFile: file).start(fresh))
        #expect(again.firstBad.name == "k6")
        #expect(third.booted.isEmpty)

        // Another bisection refuses the file, unless told to restart.
        var other = fresh
        other.bad = 7
        #expect(throws: BisectError.self) { try third.bisector(stateFile: file).start(other) }
        #expect(try third.bisector(stateFile: file).start(other, restart: true).steps.isEmpty)
    }

    @Test func goodMustComeBeforeBad() throws {
        let judge = FakeJudge(firstBad: 1)
        #expect(throws: BisectError.self) {
            try judge.bisector.start(BisectState(image: "/d", kernels: fakeKernels(4), good: 3, bad: 1, retries: 0))
        }
    }

    @Test func versionOrderComparesNumbersAsNumbers() {
        let releases = ["6.12.117+deb13-amd64", "5.10.0-32-amd64", "6.1.0-50-amd64", "6.1.0-9-amd64", "6.10.0-rc2"]
        let kernels = releases.map {
            BisectKernel(name: $0, kernel: "/\($0)", initrd: nil, initrdSource: "", release: $0, versionString: $0)
        }
        #expect(KernelOrder.sorted(kernels).map(\.release) == [
            "5.10.0-32-amd64", "6.1.0-9-amd64", "6.1.0-50-amd64", "6.10.0-rc2", "6.12.117+deb13-amd64",
        ])
    }

    @Test func initrdBesideTheKernelFollowsDebianNames() throws {
        let dir = NSTemporaryDirectory() + "d2l-beside-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let header = Data(bzImageHeader(version: bookwormVersion))
        _ = FileManager.default.createFile(atPath: dir + "/vmlinuz-6.1.0-50-amd64", contents: header)
        _ = FileManager.default.createFile(atPath: dir + "/initrd.img-6.1.0-50-amd64", contents: Data("cpio".utf8))
        _ = FileManager.default.createFile(atPath: dir + "/bzImage-custom", contents: header)
        _ = FileManager.default.createFile(atPath: dir + "/README", contents: Data("not a kernel".utf8))
        let found = try BisectKernel.discover(in: dir, initrd: .beside)
        #expect(found.map(\.name) == ["bzImage-custom", "vmlinuz-6.1.0-50-amd64"])
        #expect(found[1].initrd == dir + "/initrd.img-6.1.0-50-amd64")
        #expect(found[1].initrdSource == "beside the kernel")
        #expect(found[0].initrd == nil)
        #expect(found[0].initrdSource.hasPrefix("none"))
        #expect(try BisectKernel.load(path: dir + "/bzImage-custom", initrd: .file("/x")).initrd == "/x")
        #expect(throws: VerifyError.self) { try BisectKernel.load(path: dir + "/README", initrd: .beside) }
        // Packages are handed to the loader given, in name order with the bzImages.
        _ = FileManager.default.createFile(atPath: dir + "/linux-image-6.2.deb", contents: Data("!<arch>\n".utf8))
        let withPackages = try BisectKernel.discover(in: dir, initrd: .beside) { path, name in
            BisectKernel(name: name, kernel: path, initrd: nil, initrdSource: "", release: "6.2", versionString: "6.2")
        }
        #expect(withPackages.map(\.name) == ["bzImage-custom", "linux-image-6.2.deb", "vmlinuz-6.1.0-50-amd64"])
    }
}

@Suite struct DebianPackageTests {
    /// An ar archive as dpkg-deb writes it: "!<arch>\n", then 60-byte headers, members 2-byte aligned.
    func arArchive(_ members: [(String, [UInt8])]) -> [UInt8] {
        var bytes = Array("!<arch>\n".utf8)
        func field(_ text: String, _ width: Int) -> [UInt8] {
            Array(text.utf8) + [UInt8](repeating: 0x20, count: width - text.utf8.count)
        }
        for (name, data) in members {
            bytes += field(name, 16) + field("0", 12) + field("0", 6) + field("0", 6) + field("100644", 8)
            bytes += field(String(data.count), 10) + [0x60, 0x0A] + data
            if data.count % 2 == 1 { bytes.append(0x0A) }
        }
        return bytes
    }

    @Test func findsTheDataMemberPastOddSizedMembers() throws {
        let path = NSTemporaryDirectory() + "d2l-deb-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).deb"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let data = Array("tar bytes".utf8)
        let archive = arArchive([
            ("debian-binary", Array("2.0\n".utf8)), ("control.tar.xz", [1, 2, 3]), ("data.tar.xz/", data),
        ])
        try Data(archive).write(to: URL(fileURLWithPath: path))
        #expect(DebianPackage.isPackage(path: path))
        let members = try DebianPackage.members(path: path)
        #expect(members.map(\.name) == ["debian-binary", "control.tar.xz", "data.tar.xz"])
        let member = try DebianPackage.dataMember(path: path)
        #expect(Array(archive[Int(member.offset)..<Int(member.offset + member.size)]) == data)

        try Data(arArchive([("debian-binary", Array("2.0\n".utf8))])).write(to: URL(fileURLWithPath: path))
        #expect(throws: BisectError.self) { try DebianPackage.dataMember(path: path) }
        try Data(bzImageHeader(version: bookwormVersion)).write(to: URL(fileURLWithPath: path))
        #expect(!DebianPackage.isPackage(path: path))
        #expect(throws: BisectError.self) { try DebianPackage.members(path: path) }
    }

    @Test func kernelPathsInsideAPackage() {
        #expect(DebianPackage.isKernelPath("./boot/vmlinuz-6.1.0-50-amd64"))
        #expect(DebianPackage.isKernelPath("boot/vmlinuz-6.1.0-50-amd64"))
        #expect(!DebianPackage.isKernelPath("./boot/config-6.1.0-50-amd64"))
        #expect(!DebianPackage.isKernelPath("./usr/lib/linux/boot/vmlinuz-6.1"))
        #expect(!DebianPackage.isKernelPath("./boot/vmlinuz-6.1/extra"))
    }
}

@Suite struct BisectEndTranscriptTests {
    @Test("ends the search did not boot are booted once at the end, for their transcripts; a state file keeps them")
    func unbootedEndsAreBootedForTheirTranscripts() async throws {
        // First bad is the --bad end itself: the search never boots it.
        let judge = FakeJudge(firstBad: 4)
        let state = BisectState(image: "/disk.img", kernels: fakeKernels(5), good: 0, bad: 4, retries: 0)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("ends-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        let bisector = KernelBisector(stateFile: file, recordEnds: true) { judge.verdict($0, $1, $2) }
        let result = try await bisector.run(state)
        #expect(result.isExact)
        #expect(result.firstBad.name == "k4")
        #expect(result.lastGood.name == "k3")
        #expect(result.boots <= ceilLog2(5))
        #expect(result.endBoots == 1)
        #expect(judge.booted.last == 4)
        #expect(result.firstBadTranscript == "/t/4")
        #expect(result.firstBadStep?.deciding?.reason == "kernel panic")
        // Resumed: nothing boots again.
        let again = FakeJudge(firstBad: 4)
        let resumed = KernelBisector(stateFile: file, recordEnds: true) { again.verdict($0, $1, $2) }
        let second = try await resumed.run(try resumed.start(state))
        #expect(again.booted.isEmpty)
        #expect(second.firstBadTranscript == "/t/4")
    }

    @Test("without recordEnds the given ends are trusted and not booted")
    func trustedEndsAreNotBooted() async throws {
        let judge = FakeJudge(firstBad: 4)
        let result = try await judge.bisector.run(
            BisectState(image: "/disk.img", kernels: fakeKernels(5), good: 0, bad: 4, retries: 0))
        #expect(!judge.booted.contains(4) && !judge.booted.contains(0))
        #expect(result.endBoots == 0)
        #expect(result.firstBadTranscript == nil)
    }

    @Test("an end that boots against its label makes the result inexact")
    func contradictingEndIsReported() async throws {
        // Every kernel boots: --bad is wrong.
        let judge = FakeJudge(firstBad: 99)
        let bisector = KernelBisector(stateFile: nil, recordEnds: true) { judge.verdict($0, $1, $2) }
        let result = try await bisector.run(
            BisectState(image: "/disk.img", kernels: fakeKernels(3), good: 0, bad: 2, retries: 0))
        #expect(!result.isExact)
        #expect(result.disagreements.count == 1)
        #expect(result.disagreements.first?.contains("--bad k2") == true)
    }
}

@Suite struct BisectEndSkipTests {
    @Test("an end that cannot be tested is noted with its reason, and tried again when the bisection resumes")
    func skippedEndIsNotedAndRetried() async throws {
        let judge = FakeJudge(firstBad: 2, skip: [2])
        let state = BisectState(image: "/disk.img", kernels: fakeKernels(3), good: 0, bad: 2, retries: 2)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("skip-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        let bisector = KernelBisector(stateFile: file, recordEnds: true) { judge.verdict($0, $1, $2) }
        let result = try await bisector.run(state)
        // Ends boot once each, retries or not.
        #expect(judge.booted.filter { $0 == 2 }.count == 1)
        #expect(result.endSkips.count == 1)
        #expect(result.endSkips.first?.contains("libvirt said no") == true)
        #expect(result.firstBadTranscript == nil)
        let again = FakeJudge(firstBad: 2)
        let resumed = KernelBisector(stateFile: file, recordEnds: true) { again.verdict($0, $1, $2) }
        let second = try await resumed.run(try resumed.start(state))
        #expect(again.booted == [2])
        #expect(second.firstBadTranscript == "/t/2")
        #expect(second.endSkips.isEmpty)
    }
}

@Suite struct ImageInitramfsTests {
    @Test func releasesUsableAsFileNames() {
        #expect(ImageInitramfs.isSafeRelease("6.12.117+deb13-amd64"))
        #expect(ImageInitramfs.isSafeRelease("6.8.0-rc3~next"))
        for bad in ["", "../x", "6.1 x", ".hidden", "a/b", "6.1;rm", "6.1$(x)"] {
            #expect(!ImageInitramfs.isSafeRelease(bad), "\(bad)")
        }
    }

    @Test func debugfsListing() {
        let output = """
            /2/040755/0/0/.//
            /16/040755/0/0/etc//
            /7687/120777/0/0/lib/7/
            /9/100644/0/0/config-6.1.0-50-amd64/259569/
            """
        let entries = ImageInitramfs.listing(output)
        #expect(entries.map(\.name) == ["etc", "lib", "config-6.1.0-50-amd64"])
        #expect(entries.map(\.mode) == [0o040755, 0o120777, 0o100644])
    }

    @Test func modulePathsOfALinuxImagePackage() {
        let release = "6.12.117+deb13-amd64"
        #expect(ImageInitramfs.relativeModulePath("usr/lib/modules/\(release)/kernel/fs/ext4/ext4.ko.xz", release: release)
            == "kernel/fs/ext4/ext4.ko.xz")
        #expect(ImageInitramfs.relativeModulePath("lib/modules/\(release)", release: release) == "")
        #expect(ImageInitramfs.relativeModulePath("lib/modules/\(release)x/a.ko", release: release) == nil)
        #expect(ImageInitramfs.relativeModulePath("lib/modules/\(release)/../../etc/passwd", release: release) == nil)
        #expect(ImageInitramfs.relativeModulePath("boot/vmlinuz-\(release)", release: release) == nil)
    }

    @Test func symlinkTargetFromDebugfsStat() {
        let stat = """
            Inode: 7689   Type: symlink    Mode:  0777   Flags: 0x0
            Size: 7
            Fast link dest: "usr/bin"
            """
        #expect(ImageInitramfs.fastLinkTarget(statOutput: stat) == "usr/bin")
        #expect(ImageInitramfs.fastLinkTarget(statOutput: "Inode: 2 Type: directory") == nil)
    }

}
