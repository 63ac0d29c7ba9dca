import D2LDiskModel
import Foundation
import Testing
@testable import D2LVerify

/// Stages with the default patterns and short deadlines, so that stalls fail fast in tests.
func plan(initSystem: InitSystem = .unknown, deadline: Duration = .seconds(5), timeout: Duration = .seconds(30))
    -> StagePlan
{
    var stages = StagePlan.defaultStages(initSystem: initSystem)
    for index in stages.indices { stages[index].deadline = deadline }
    return StagePlan(stages: stages, failures: StagePlan.defaultFailures(), timeout: timeout)
}

func verify(
    _ transcript: String, plan: StagePlan, login: LoginCredentials? = nil, commands: [GuestCommand] = [],
    closeAtEnd: Bool = false, respond: ReplayHypervisor.Responder? = nil
) async throws -> (BootReport, ReplayHypervisor) {
    let hypervisor = Transcripts.hypervisor(try Transcripts.load(transcript), closeAtEnd: closeAtEnd, respond: respond)
    var options = VerifyOptions(plan: plan, login: login, commands: commands)
    options.loginDeadline = .seconds(2)
    options.commandDeadline = .seconds(2)
    options.poweroffDeadline = .seconds(2)
    let verifier = BootVerifier(hypervisor: hypervisor, options: options)
    let report = try await verifier.verify(MachineSpec(diskPath: "/fake.img"))
    return (report, hypervisor)
}

@Suite struct BootVerifierTests {
    @Test func systemdBootPassesAllFourStagesInOrder() async throws {
        let (report, hypervisor) = try await verify("debian12-systemd.log", plan: plan(initSystem: .systemd))
        #expect(report.passed)
        #expect(report.stages.map(\.name) == ["bootloader", "kernel", "init", "login"])
        #expect(report.stages.allSatisfy { $0.reached })
        #expect(report.kernelVersion == "6.1.0-50-amd64")
        #expect(report.stages[0].line?.hasPrefix("SYSLINUX 6.04") == true)
        #expect(report.stages[3].line == "d2ltest login: ")
        let times = report.stages.compactMap(\.seconds)
        #expect(times == times.sorted())
        #expect(hypervisor.guests.allSatisfy { $0.destroyed })
    }

    @Test func openRCBootPasses() async throws {
        let (report, _) = try await verify("openrc-boot.log", plan: plan(initSystem: .openrc))
        #expect(report.passed)
        #expect(report.stages[2].line?.contains("INIT: version 3.06 booting") == true)
    }

    @Test func openRCPatternSeesThroughColourCodes() async throws {
        var openrcOnly = plan()
        openrcOnly.expect("init", try ConsolePattern(#"OpenRC .* is starting up"#))
        let (report, _) = try await verify("openrc-boot.log", plan: openrcOnly)
        #expect(report.passed)
        #expect(report.stages[2].line?.hasSuffix("OpenRC 0.45.2 is starting up Linux 6.1.0-50-amd64 (x86_64)") == true)
    }

    @Test func aLaterStageProvesAnUnseenOne() async throws {
        // systemd's banner never comes (an OpenRC boot, or a quiet console), but the login prompt does:
        // the init stage is reported as not seen, and the boot passes.
        let (report, _) = try await verify(
            "openrc-boot.log", plan: plan(initSystem: .systemd, deadline: .milliseconds(500)))
        #expect(report.passed, "\(report.summary())")
        #expect(report.stages[2].unseen && report.stages[2].reached)
        #expect(report.summary().contains("not seen on the console: init"))
    }

    @Test func kernelPanicFailsAtOnceNamingTheStage() async throws {
        let (report, hypervisor) = try await verify(
            "debian12-init-false-panic.log", plan: plan(initSystem: .systemd, deadline: .seconds(20)))
        #expect(report.seconds < 1)  // decided at the panic line, not at the 20 s deadline
        #expect(!report.passed)
        #expect(report.failedStage == "init")
        #expect(report.reason?.contains("Kernel panic - not syncing: Attempted to kill init!") == true)
        #expect(report.stages.map(\.reached) == [true, true, false, false])
        #expect(report.lastLines.contains { $0.contains("Kernel panic") })
        #expect(hypervisor.guests.allSatisfy { $0.destroyed })
    }

    @Test func emergencyModeFailsAtTheLoginStage() async throws {
        let (report, _) = try await verify("systemd-emergency.log", plan: plan(initSystem: .systemd, deadline: .seconds(20)))
        #expect(!report.passed)
        #expect(report.failedStage == "login")
        #expect(report.reason?.contains("emergency mode") == true)
    }

    @Test func stallFailsAtTheStageDeadline() async throws {
        let (report, _) = try await verify(
            "stall-after-kernel.log", plan: plan(initSystem: .systemd, deadline: .milliseconds(700)))
        #expect(!report.passed)
        #expect(report.failedStage == "init")
        #expect(report.reason?.contains("deadline") == true)
        let kernelAt = try #require(report.stages[1].seconds)
        let failedAt = try #require(report.stages[2].seconds)
        // init's deadline passes (a quiet console?), then login's: decided on the first tick after both.
        #expect(failedAt - kernelAt >= 1.4 && failedAt - kernelAt <= 1.65, "\(report.stages)")
    }

    @Test func aConsoleThatFallsSilentFailsAtTheSilenceBudget() async throws {
        var silent = plan(initSystem: .systemd, deadline: .seconds(60))
        silent.silence = .milliseconds(500)
        let (report, _) = try await verify("stall-after-kernel.log", plan: silent)
        #expect(!report.passed)
        #expect(report.failedStage == "init")
        #expect(report.reason?.hasPrefix("no console output for 0 s after") == true)
        #expect(report.seconds < 1)
    }

    @Test func overallTimeoutEndsAStall() async throws {
        let (report, _) = try await verify(
            "stall-after-kernel.log", plan: plan(deadline: .seconds(60), timeout: .milliseconds(600)))
        #expect(!report.passed)
        #expect(report.reason?.contains("overall timeout") == true)
    }

    @Test func printkInsideTheLoginPromptStillMatches() async throws {
        let (report, _) = try await verify("printk-inside-login-prompt.log", plan: plan(initSystem: .systemd))
        #expect(report.passed)
        #expect(report.stages[3].line == "d2ltest login: ")
    }

    @Test func guestThatStopsEarlyFails() async throws {
        let (report, _) = try await verify("stall-after-kernel.log", plan: plan(), closeAtEnd: true)
        #expect(!report.passed)
        #expect(report.failedStage == "init")
        #expect(report.reason?.contains("stopped") == true)
    }

    @Test func failedUnitFailsOrWarns() async throws {
        let failing = try Transcripts.load("debian12-systemd.log") + Array(
            "\r\n[\u{1B}[0;1;31mFAILED\u{1B}[0m] Failed to start foo.service.\r\n".utf8)
        let strict = BootVerifier(
            hypervisor: Transcripts.hypervisor(failing), options: VerifyOptions(plan: plan()))
        let strictReport = try await strict.verify(MachineSpec(diskPath: "/fake.img"))
        // Right after the login prompt failure patterns are still armed (the settle time)...
        #expect(!strictReport.passed)
        #expect(strictReport.reason?.contains("Failed to start foo.service") == true)
        // ...and one before login fails the boot too.
        let good = try Transcripts.load("debian12-systemd.log")
        let at = try #require(good.firstRange(of: Array("Welcome to".utf8)))
        let early = Array(good[..<at.lowerBound]) + Array("[FAILED] Failed to mount /boot.\r\n".utf8)
            + Array(good[at.lowerBound...])
        let failed = try await BootVerifier(
            hypervisor: Transcripts.hypervisor(early), options: VerifyOptions(plan: plan())
        ).verify(MachineSpec(diskPath: "/fake.img"))
        #expect(!failed.passed)
        #expect(failed.reason?.contains("Failed to mount /boot") == true)
        var lenient = plan()
        lenient.failures = StagePlan.defaultFailures(failedUnits: .warn)
        let warned = try await BootVerifier(
            hypervisor: Transcripts.hypervisor(early), options: VerifyOptions(plan: lenient)
        ).verify(MachineSpec(diskPath: "/fake.img"))
        #expect(warned.passed)
        #expect(warned.warnings.count == 1)
    }

    /// A shell on the fake console: password prompt, markers, exit status, poweroff.
    static let shell: @Sendable (String) -> (reply: String, close: Bool)? = { typed in
        if typed == "\r" { return ("\r\n\r\nd2ltest login: ", false) }  // getty prints its prompt again
        if typed == "root\r" { return ("root\r\nPassword: ", false) }
        if typed == "secret\r" { return ("\r\nLinux d2ltest 6.1.0\r\nroot@d2ltest:~# ", false) }
        if typed == "wrong\r" { return ("\r\n\r\nLogin incorrect\r\nd2ltest login: ", false) }
        if typed == "poweroff\r" { return ("poweroff\r\n[  OK  ] Reached target Power-Off.\r\nreboot: Power down\r\n", true) }
        guard let begin = typed.range(of: "'_BEGIN'") else { return nil }
        let marker = String(typed[typed.index(typed.startIndex, offsetBy: 5)..<begin.lowerBound])
        let command = typed.contains("is-system-running") ? "degraded" : "boom"
        let status = command == "degraded" ? 1 : 3
        // The shell echoes the typed line (wrapped at 80 columns) before running it.
        let echo = typed.replacingOccurrences(of: "\r", with: "")
        let wrapped = stride(from: 0, to: echo.count, by: 80).map {
            String(echo.dropFirst($0).prefix(80))
        }.joined(separator: "\r\n")
        return ("\(wrapped)\r\n\(marker)_BEGIN\r\n\(command)\r\n\r\n\(marker)_RC=\(status)\r\nroot@d2ltest:~# ", false)
    }

    @Test func loginRunsCommandsReadsStatusAndPowersOff() async throws {
        let commands = [
            GuestCommand(
                command: "systemctl is-system-running --wait", expectOutput: try ConsolePattern("running|degraded"))
        ]
        let (report, hypervisor) = try await verify(
            "debian12-systemd.log", plan: plan(), login: LoginCredentials("root:secret"), commands: commands,
            respond: Self.shell)
        #expect(report.passed, "\(report.summary())")
        #expect(report.commands.first?.exitStatus == 1)
        #expect(report.commands.first?.output == "degraded")
        let sent = try #require(hypervisor.guests.first?.sent)
        #expect(sent.hasPrefix("\rroot\rsecret\r"))  // a newline first: getty prints its prompt again
        #expect(sent.hasSuffix("poweroff\r"))
    }

    @Test func commandWithNonZeroStatusFails() async throws {
        let (report, _) = try await verify(
            "debian12-systemd.log", plan: plan(), login: LoginCredentials("root:secret"),
            commands: [GuestCommand(command: "false")], respond: Self.shell)
        #expect(!report.passed)
        #expect(report.commands.first?.exitStatus == 3)
        #expect(report.failedStage == "run: false")
    }

    @Test func wrongPasswordFails() async throws {
        let (report, _) = try await verify(
            "debian12-systemd.log", plan: plan(), login: LoginCredentials("root:wrong"), respond: { typed in
                typed == "root\r" ? ("Password: ", false) : Self.shell(typed)
            })
        #expect(!report.passed)
        #expect(report.reason?.contains("refused the password") == true)
    }

    @Test func junitHasOneCasePerStageAndTheFailure() async throws {
        let (report, _) = try await verify("debian12-init-false-panic.log", plan: plan(deadline: .seconds(20)))
        let xml = report.junit()
        #expect(xml.components(separatedBy: "<testcase ").count - 1 == 4)
        #expect(xml.contains("<failure message=\"kernel panic: Kernel panic - not syncing"))
        #expect(xml.components(separatedBy: "<skipped/>").count - 1 == 1)
        #expect(xml.hasSuffix("</testsuite>\n"))
        let json = try report.json()
        let decoded = try JSONDecoder().decode(BootReport.self, from: Data(json.utf8))
        #expect(decoded.failedStage == "init")
        #expect(json.contains("\"verdict\" : \"did not boot\""))
        #expect(decoded.lastLines.count == 50)
    }
}
