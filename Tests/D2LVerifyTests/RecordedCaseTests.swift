import D2LDiskModel
import Foundation
import Testing
@testable import D2LVerify

/// Real boots of the verdict-cases recipe (Images/verdict-cases), recorded with their timing, judged
/// through `d2l verify --replay` as a user would: each kind of boot the verifier once got wrong.
/// Times are the recordings' own (a slow TCG host: 40-125 s to the prompt).
@Suite struct RecordedCaseTests {
    static func path(_ name: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Transcripts/cases/\(name).log").path
    }

    /// Judges a recording; `configure` sets options as on the command line.
    static func replay(_ name: String, _ configure: (inout VerifyRequest) -> Void = { _ in }) async throws -> BootReport {
        var request = VerifyRequest(image: nil)
        request.replay = path(name)
        configure(&request)
        let result = try await DiskVerifier.run(request, notes: { _ in })
        return try #require(result.boots.first)
    }

    /// The recording's time of the first chunk whose text (cleaned) contains `needle`.
    static func time(of needle: String, in name: String) throws -> Double {
        let transcript = try TimedTranscript.load(path: path(name))
        var text = ConsoleText()
        var pending = ""
        for chunk in transcript.chunks {
            pending += text.append(chunk.bytes).map(\.printed).joined(separator: "\n") + text.partialLine
            if pending.contains(needle) { return chunk.at.seconds }
            pending = String(pending.suffix(needle.count))
        }
        throw CancellationError()
    }

    // 1. The login prompt, both ways.

    @Test func aFakePromptBeforeAFailedMountIsNoLogin() async throws {
        let report = try await Self.replay("fake-login-early")
        #expect(!report.passed)
        #expect(report.stages.last?.reached == false)
        #expect(report.reason?.contains("Failed to mount mnt-early.mount") == true, "\(report.reason ?? "")")
        let line = try Self.time(of: "Failed to mount mnt-early.mount", in: "fake-login-early")
        #expect(report.seconds - line < 1)
    }

    @Test func aRealPromptThatLateOutputRanIntoIsALogin() async throws {
        let late = try await Self.replay("prompt-then-late-message")
        #expect(late.passed, "\(late.summary())")
        let prompt = try #require(late.stages.last?.seconds)
        let late2 = try Self.time(of: "late message", in: "prompt-then-late-message")
        #expect(prompt < late2)
        let noisy = try await Self.replay("prompt-then-kernel-messages")
        #expect(noisy.passed, "\(noisy.summary())")
        #expect(noisy.stages.last?.line == "d2l login: ")
    }

    // 2. A crash right after the prompt.

    @Test func aPanicAfterThePromptFailsTheBoot() async throws {
        let report = try await Self.replay("panic-after-login")
        #expect(!report.passed)
        #expect(report.reason?.hasPrefix("kernel panic: Kernel panic - not syncing: sysrq triggered crash") == true)
        #expect(report.failureLines.last?.contains("---[ end Kernel panic") == true)
        #expect(report.seconds - (try Self.time(of: "Kernel panic - not syncing", in: "panic-after-login")) < 1)
    }

    // 3. d2l's own typing.

    @Test func theEchoOfATypedCommandIsNotAPanic() async throws {
        let report = try await Self.replay("typed-panic-phrase") {
            $0.login = "root"
            $0.commands = [RunCheck(command: #"grep -c "Kernel panic - not syncing" /var/log/x || true"#)]
        }
        #expect(report.passed, "\(report.summary())")
        #expect(report.commands.first?.exitStatus == 0)
    }

    // 4. Text that merely contains a failure phrase.

    @Test func aServiceThatPrintsAPanicPhraseIsNotTheKernel() async throws {
        let report = try await Self.replay("userspace-panic-text")
        #expect(report.passed, "\(report.summary())")
    }

    // 5. Quiet boots.

    @Test func aQuietBootPassesWithItsHiddenStagesNotSeen() async throws {
        let report = try await Self.replay("quiet")
        #expect(report.passed, "\(report.summary())")
        #expect(report.stages.filter(\.unseen).map(\.name) == ["kernel", "init"])
    }

    // 6. Failures the console explains.

    @Test(arguments: [
        ("rescue-locked", "You are in rescue mode"), ("rescue-maintenance", "You are in rescue mode"),
        ("initramfs-break", "Spawning shell within the initramfs"), ("root-timeout", "Timed out waiting for device"),
    ])
    func anExplainedFailureFailsAtItsLine(name: String, line: String) async throws {
        let report = try await Self.replay(name)
        #expect(!report.passed)
        #expect(report.reason?.contains(line) == true, "\(report.reason ?? "")")
        #expect(report.seconds - (try Self.time(of: line, in: name)) < 1)
    }

    @Test func aConsoleThatFallsSilentFailsAtItsBudget() async throws {
        // A log ends with its last byte: the budget must be shorter than what follows it in a replay
        // (10 s), and longer than the boot's own quiet phases (6.2 s at most in this one).
        let report = try await Self.replay("silent-no-getty") { $0.silence = 8 }
        #expect(!report.passed)
        #expect(report.reason?.hasPrefix("no console output for 8 s after") == true, "\(report.reason ?? "")")
        #expect(report.reason?.contains("Record Runlevel Change in UTMP.") == true)
    }

    // 7. Escape sequences cut short.

    @Test func aCutEscapeSequenceHidesNoFailure() async throws {
        let report = try await Self.replay("cut-escape") { $0.failedUnits = .fail }
        #expect(!report.passed)
        #expect(report.reason?.contains("Timed out waiting for device dev-foo.device") == true, "\(report.reason ?? "")")
        // The [FAILED] line after it is a line of its own, whole.
        let bytes = try Transcripts.load("cases/cut-escape.log")
        var text = ConsoleText()
        let lines = text.append(bytes).map(\.text)
        #expect(lines.contains("[FAILED] Failed to start foo.service - Foo."))
        #expect(lines.contains("é café"))
    }

    // 8. Command output.

    @Test func commandOutputIsWhatTheCommandWrote() async throws {
        let report = try await Self.replay("command-noise") {
            $0.login = "root"
            $0.commands = [
                RunCheck(command: "seq 1 2000"), RunCheck(command: #"printf '10%%\r20%%\r100%%\n'"#, expectOutput: "^100%$"),
            ]
        }
        #expect(report.passed, "\(report.summary())")
        #expect(report.commands.first?.output == (1...2000).map(String.init).joined(separator: "\n"))
        #expect(report.commands.last?.output == "100%")
    }

    // 9. Non-fatal kernel events.

    @Test func kernelWarningsAreReportedWithTheirTracesOrFail() async throws {
        let report = try await Self.replay("kernel-warning")
        #expect(report.passed, "\(report.summary())")
        let names = report.warnings.map(\.name)
        #expect(names == ["kernel warning", "hung task"], "\(names)")
        #expect(report.warnings[0].lines.last?.hasPrefix("---[ end trace") == true)
        #expect(report.warnings[1].lines.last?.contains("</TASK>") == true)
        #expect(report.junit().contains("classname=\"warning\""))
        let strict = try await Self.replay("kernel-warning") { $0.kernelWarnings = .fail }
        #expect(!strict.passed)
        #expect(strict.reason?.contains("WARNING: CPU: 0 PID: 226 at /src/d2l_warn.c:12") == true)
        #expect(strict.seconds - (try Self.time(of: "WARNING: CPU", in: "kernel-warning")) < 1)
    }

    // 10. Endings and logins.

    @Test func aResetAndAPowerOffAreNamed() async throws {
        let reset = try await Self.replay("reset-during-boot")
        #expect(!reset.passed)
        #expect(reset.reason?.contains("the guest reset during boot: a second firmware (SeaBIOS) banner") == true, "\(reset.reason ?? "")")
        let off = try await Self.replay("poweroff-during-boot")
        #expect(!off.passed)
        #expect(off.reason?.contains("the guest powered off before reaching it (reboot: Power down)") == true, "\(off.reason ?? "")")
        #expect(off.seconds - (try Self.time(of: "reboot: Power down", in: "poweroff-during-boot")) < 1)
        #expect(reset.seconds - (try Self.time(of: "sysrq: Resetting", in: "reset-during-boot")) < 1)
    }

    @Test func aRefusedPasswordIsNoVerdictOnTheBoot() async throws {
        let report = try await Self.replay("login-refused") { $0.login = "root:wrong" }
        #expect(report.outcome == .couldNotTest)
        #expect(report.reason?.contains("refused the password") == true, "\(report.reason ?? "")")
        #expect(report.junit().contains("<error message="))
    }

    // 11. Another user's session.

    @Test func anotherUsersSessionEndsWithoutPoweroff() async throws {
        let report = try await Self.replay("other-user-session") {
            $0.login = "tester"
            $0.commands = [RunCheck(command: "id -un", expectOutput: "^tester$")]
        }
        #expect(report.passed, "\(report.summary())")
        #expect(report.ending?.contains("ended") == true)  // a replayed session ends with its log
    }

    @Test func theControlBootPasses() async throws {
        let report = try await Self.replay("normal")
        #expect(report.passed, "\(report.summary())")
        #expect(report.stages.allSatisfy { $0.reached && !$0.unseen })
    }
}
