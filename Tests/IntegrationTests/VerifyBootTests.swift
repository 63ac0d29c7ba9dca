import D2LSupport
import Foundation
import Testing

/// Real boots through libvirt's embedded driver (TCG here: Debian reaches login in ~20 s, CI may be 3x slower).
@Suite(.serialized) struct VerifyBootTests {
    struct Report: Decodable {
        struct Stage: Decodable {
            var name: String
            var reached: Bool
            var seconds: Double?
        }
        struct Command: Decodable {
            var command: String
            var exitStatus: Int?
            var output: String
            var passed: Bool
        }
        var passed: Bool
        var verdict: String
        var kernelVersion: String?
        var stages: [Stage]
        var failedStage: String?
        var reason: String?
        var commands: [Command]
        var seconds: Double
        var lastLines: [String]
        var firmware: String?
    }

    /// `d2l verify --json` prints one report for one boot, `{"boots": [...]}` for several (a hybrid disk).
    struct Boots: Decodable {
        var boots: [Report]
        var passed: Bool
    }

    static func reports(_ stdout: String) -> [Report]? {
        let data = Data(stdout.utf8)
        if let one = try? JSONDecoder().decode(Report.self, from: data) { return [one] }
        return (try? JSONDecoder().decode(Boots.self, from: data))?.boots
    }

    /// Runs `d2l verify` and checks that it left no QEMU process behind.
    static func verify(_ arguments: [String]) async throws -> (status: Int32, report: Report?, stderr: String, wall: Double) {
        let (status, reports, stderr, wall) = try await verifyAll(arguments)
        return (status, reports?.count == 1 ? reports?.first : nil, stderr, wall)
    }

    /// Runs `d2l verify` and returns every boot's report (two for a hybrid disk under the default firmware).
    static func verifyAll(_ arguments: [String]) async throws -> (status: Int32, reports: [Report]?, stderr: String, wall: Double) {
        let before = Fixtures.orphanedQEMUProcesses()
        let start = Date()
        let result = try await Fixtures.d2l(["verify"] + arguments)
        let wall = Date().timeIntervalSince(start)
        let leftover = Fixtures.orphanedQEMUProcesses().subtracting(before)
        #expect(leftover.isEmpty, "QEMU processes left running: \(leftover)")
        return (result.status, reports(result.stdout), result.stderr, wall)
    }

    @Test(.timeLimit(.minutes(15))) func debianDiskBootsThroughAllStagesAndReportsRunning() async throws {
        let disk = try await Fixtures.debianDisk()
        let before = try SHA256Hasher.hex(ofFile: disk)
        let dir = try Fixtures.scratchDirectory("verify-debian")
        let junit = dir + "/junit.xml"
        let transcript = dir + "/console.log"
        // The default proves what the disk claims: the hybrid disk boots under BIOS and then under UEFI.
        let (status, reports, stderr, _) = try await Self.verifyAll([
            disk, "--timeout", "900", "--login", "root",
            "--run", "systemctl is-system-running --wait", "--expect-output", "running|degraded",
            "--json", "--junit", junit, "--transcript", transcript,
        ])
        #expect(status == 0, "\(stderr)")
        let boots = try #require(reports, "no JSON report; stderr:\n\(stderr)")
        #expect(boots.map(\.firmware) == ["bios", "uefi"])
        for parsed in boots {
            #expect(parsed.verdict == "booted")
            #expect(parsed.stages.map(\.name).suffix(4) == ["bootloader", "kernel", "init", "login"])
            #expect(parsed.stages.allSatisfy { $0.reached })
            let times = parsed.stages.compactMap(\.seconds)
            #expect(times == times.sorted())
            #expect(parsed.kernelVersion?.hasPrefix("6.1.") == true)
            let command = try #require(parsed.commands.first)
            #expect(command.passed)
            #expect(command.output.contains("running") || command.output.contains("degraded"))
        }
        // Live progress names each stage and each firmware.
        for stage in ["bootloader", "kernel", "init", "login", "under bios", "under uefi"] { #expect(stderr.contains(stage)) }
        // One raw transcript per boot, from the firmware on, escape codes kept.
        let bios = try Data(contentsOf: URL(fileURLWithPath: transcript + ".bios"))
        #expect(String(decoding: bios, as: UTF8.self).contains("SYSLINUX"))
        #expect(bios.contains(0x1B))
        let uefi = try Data(contentsOf: URL(fileURLWithPath: transcript + ".uefi"))
        #expect(String(decoding: uefi, as: UTF8.self).contains("BdsDxe"))
        // JUnit: a test suite per boot, a test case per stage and per command.
        let xml = try String(contentsOfFile: junit, encoding: .utf8)
        let cases = boots.map { $0.stages.count + $0.commands.count }.reduce(0, +)
        #expect(xml.components(separatedBy: "<testcase ").count - 1 == cases)
        #expect(xml.components(separatedBy: "<testsuite ").count - 1 == 2)
        // The guest wrote to a throwaway overlay: the image is byte for byte the same.
        #expect(try SHA256Hasher.hex(ofFile: disk) == before)
    }

    @Test(.timeLimit(.minutes(10))) func panickingKernelFailsAtTheInitStageRightAway() async throws {
        let archive = try await Fixtures.debianDockerArchive()
        let dir = try Fixtures.scratchDirectory("verify-panic")
        let disk = dir + "/panic.img"
        let build = try await Fixtures.d2l(["build", archive, "-o", disk, "--append", "init=/bin/false", "-q"])
        try #require(build.status == 0, "\(build.stderr)")
        // One firmware is enough to judge a panic (the hybrid default would boot it twice).
        let (status, report, stderr, wall) = try await Self.verify([disk, "--firmware", "bios", "--json"])
        #expect(status == 1, "\(stderr)")
        let parsed = try #require(report, "no JSON report; stderr:\n\(stderr)")
        #expect(parsed.failedStage == "init")
        #expect(parsed.reason?.contains("Kernel panic - not syncing") == true)
        #expect(parsed.stages.map(\.name) == ["firmware", "bootloader", "kernel", "init", "login"])
        #expect(parsed.stages.map(\.reached) == [true, true, true, false, false])
        #expect(parsed.lastLines.contains { $0.contains("Kernel panic") })
        // The verdict comes with the panic line, not at the init deadline (120 s): the whole run,
        // start-up and teardown included, ends within a few seconds of it.
        let kernelAt = try #require(parsed.stages.first { $0.name == "kernel" }?.seconds)
        #expect(parsed.seconds - kernelAt < 60)
        #expect(wall - parsed.seconds < 10, "wall \(wall) s, verdict at \(parsed.seconds) s after power-on")
    }

    @Test func anUnsignedLoaderIsRefusedUnderSecureBootAtOnce() async throws {
        let disk = try await Fixtures.debianDisk()  // systemd-boot: not signed
        let (status, report, _, _) = try await Self.verify([disk, "--firmware", "uefi-secure", "--json"])
        #expect(status == 1)
        let parsed = try #require(report)
        #expect(parsed.reason?.contains("Secure Boot refused the loader") == true, "\(parsed.reason ?? "")")
        #expect(parsed.reason?.contains("Access Denied") == true)
        #expect(parsed.stages.first?.name == "firmware")
        #expect(parsed.seconds < 60)  // OVMF refuses it within seconds of power-on
    }

    @Test func missingImageCannotBeTested() async throws {
        let (status, _, stderr, _) = try await Self.verify(["/nonexistent/d2l-missing.img"])
        #expect(status == 125)
        #expect(stderr.contains("no such file"))
    }

    @Test func badOptionsCannotBeTested() async throws {
        let (status, _, _, _) = try await Self.verify(["/dev/null", "--accel", "warp"])
        #expect(status == 125)
        let (runWithoutLogin, _, stderr, _) = try await Self.verify(["/dev/null", "--run", "true"])
        #expect(runWithoutLogin == 125)
        #expect(stderr.contains("--run needs --login"))
    }
}
