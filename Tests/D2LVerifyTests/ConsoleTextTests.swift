import D2LDiskModel
import Foundation
import Testing
@testable import D2LVerify

@Suite struct ConsoleTextTests {
    func lines(_ text: String, chunk: Int = 3) -> ([String], String) {
        let (out, partial) = consoleLines(Array(text.utf8), chunk: chunk)
        return (out.map(\.text), partial)
    }

    func consoleLines(_ bytes: [UInt8], chunk: Int = 3) -> ([ConsoleLine], String) {
        var console = ConsoleText()
        var out: [ConsoleLine] = []
        for start in stride(from: 0, to: bytes.count, by: chunk) {
            out += console.append(bytes[start..<min(start + chunk, bytes.count)])
        }
        return (out, console.partialLine)
    }

    @Test func stripsANSIEscapesEvenAcrossChunks() {
        let (out, _) = lines("Welcome to \u{1B}[1mDebian GNU/Linux 12 (bookworm)\u{1B}[0m!\r\n\u{1B}]0;title\u{07}ok\r\n")
        #expect(out == ["Welcome to Debian GNU/Linux 12 (bookworm)!", "ok"])
    }

    @Test func removesPrintkTimestampAtLineStartAndKeepsItsTime() {
        let (out, _) = consoleLines(Array("[   12.500000] Linux version 6.1.0-50-amd64 (x)\r\nplain\r\n".utf8))
        #expect(out == [ConsoleLine("Linux version 6.1.0-50-amd64 (x)", kernelTime: 12.5), ConsoleLine("plain")])
        #expect(out[0].isKernel && !out[1].isKernel)
    }

    @Test func carriageReturnsOverwriteAsATerminalDoes() {
        #expect(lines("10%\r20%\r100%\r\n").0 == ["100%"])
        #expect(lines("downloading...\r\u{1B}[Kdone\n").0 == ["done"])
        #expect(lines("[  *** ] A start job is running\r[  OK  ] Started foo.\r\n").0 == ["[  OK  ] Started foo.is running"])
        #expect(lines("abc\u{08}\u{08}X\n").0 == ["aXc"])
    }

    @Test func aCutEscapeSequenceNeverSwallowsALineEnd() {
        // systemd's status line ending in a bare ESC, then a [FAILED] line: both lines survive.
        let (out, _) = lines("[ TIME ] Timed out waiting for device dev-foo.device\u{1B}\r\n[FAILED] Failed to start foo.service.\r\n", chunk: 1)
        #expect(out == ["[ TIME ] Timed out waiting for device dev-foo.device", "[FAILED] Failed to start foo.service."])
        // A CSI cut short by the line end.
        #expect(lines("half\u{1B}[1;3\r\nnext\r\n").0 == ["half", "next"])
        // A lone ESC before a UTF-8 character does not eat its first byte.
        #expect(lines("\u{1B}é café\r\n").0 == ["é café"])
        // An OSC string never spans a line end.
        #expect(lines("\u{1B}]0;title\nafter\n").0 == ["after"])
    }

    @Test func kernelMessageInsideALineIsCutOut() {
        let (out, partial) = lines("deb[    2.948528] random: crng init done\r\nian login: ")
        #expect(out == ["random: crng init done"])
        #expect(partial == "debian login: ")
    }

    @Test func kernelMessageAfterAPromptLeavesThePromptOpen() {
        let (out, partial) = lines("d2ltest login: [   20.1] random: crng init done\r\n", chunk: 100)
        #expect(out == ["random: crng init done"])
        #expect(partial == "d2ltest login: ")
    }

    @Test func unfinishedKernelMessageDoesNotShowInThePartialLine() {
        let (_, partial) = lines("login: [   20.1] random: crng in", chunk: 100)
        #expect(partial == "login: ")
    }

    @Test func bracketsThatAreNotTimestampsStay() {
        let (out, _) = lines("[  OK  ] Started foo.\r\n[FAILED] Failed bar.\r\n")
        #expect(out == ["[  OK  ] Started foo.", "[FAILED] Failed bar."])
    }

    @Test func terminalSafeTextHasNoEscapes() {
        let safe = TerminalSafe.text("a\u{1B}]0;pwned\u{07}b\u{9B}c\u{202E}d")
        #expect(!safe.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 || $0.value == 0x9B })
        #expect(safe == "a?]0;pwned?b?c?d")
    }
}

@Suite struct StageMachineTests {
    @Test func defaultPatternsCompileAndMatchWhatTheyShould() throws {
        let stages = StagePlan.defaultStages()
        #expect(stages.map(\.name) == ["bootloader", "kernel", "init", "login"])
        #expect(stages[0].pattern.firstMatch(in: "ISOLINUX 6.04 EDD") != nil)
        #expect(stages[1].pattern.firstMatch(in: "Linux version 6.12.9-amd64 (x)")?[1] == "6.12.9-amd64")
        for line in ["Welcome to Debian!", "OpenRC 0.45.2 is starting up Linux", "init started: BusyBox v1.36"] {
            #expect(stages[2].pattern.firstMatch(in: line) != nil, "\(line)")
        }
        // systemd in a dracut initramfs greets before the root is mounted: that is not the root's init.
        #expect(stages[2].pattern.firstMatch(in: "Welcome to Debian GNU/Linux 12 (bookworm) dracut-059-4 (Initramfs)!") == nil)
        let named = StagePlan.defaultStages(initSystem: .systemd, osName: "Debian GNU/Linux 12 (bookworm)")
        #expect(named[2].pattern.firstMatch(in: "Welcome to Debian GNU/Linux 12 (bookworm)!") != nil)
        #expect(named[2].pattern.firstMatch(in: "Welcome to Fedora Linux 40!") == nil)
        #expect(stages[3].pattern.matchesPrompt)
        #expect(stages[3].pattern.firstMatch(in: "Last login: Mon Nov 3") == nil)
        #expect(StagePlan.defaultFailures().allSatisfy { !$0.pattern.source.isEmpty })
    }

    @Test func stagesMustComeInOrder() {
        var machine = StageMachine(plan: plan(), canNudge: false)
        // A login prompt before the kernel does not count once the kernel stage is required...
        _ = machine.consume(line: ConsoleLine("SYSLINUX 6.04"), at: .seconds(2))
        _ = machine.consume(line: ConsoleLine("Linux version 6.1.0 (x)", kernelTime: 0), at: .seconds(3))
        #expect(machine.current == 2)
    }

    @Test func partialLinesOnlyMatchPrompts() {
        var machine = StageMachine(plan: plan(), canNudge: false)
        _ = machine.consume(line: ConsoleLine("SYSLINUX 6.04"), at: .seconds(1))
        // "Linux version 6.1" may still be growing: its version must not be captured early.
        #expect(machine.consume(partial: "Linux version 6.1", at: .seconds(2)).isEmpty)
    }

    @Test func aStageNotSeenByItsDeadlineWaitsForTheNext() {
        var machine = StageMachine(plan: plan(deadline: .seconds(10), timeout: .seconds(100)), canNudge: false)
        _ = machine.consume(line: ConsoleLine("SYSLINUX 6.04"), at: .seconds(8))
        #expect(machine.check(at: .seconds(17)).isEmpty)
        // The kernel's banner is not seen by 18.5 s: it may be a quiet console, so init is awaited...
        #expect(machine.check(at: .seconds(18.5)) == [.notSeen(stage: "kernel", at: .seconds(18.5))])
        #expect(machine.failure == nil)
        // ...and when login's deadline passes too, the boot fails naming the first stage not seen.
        _ = machine.check(at: .seconds(29))
        let events = machine.check(at: .seconds(40))
        #expect(events == [.failed(stage: "kernel", at: .seconds(40), reason: .deadline(seconds: 10), lines: [])])
    }

    @Test func kernelPatternsMatchKernelMessagesOnly() {
        var machine = StageMachine(plan: plan(), canNudge: false)
        _ = machine.consume(line: ConsoleLine("Linux version 6.1.0 (x)", kernelTime: 0), at: .seconds(1))
        #expect(machine.consume(line: ConsoleLine("my-service: Kernel panic - not syncing: a log line"), at: .seconds(2)).isEmpty)
        #expect(machine.consume(line: ConsoleLine("Kernel panic - not syncing: from userspace"), at: .seconds(2)).isEmpty)
        #expect(machine.consume(line: ConsoleLine("my-service: Kernel panic - not syncing", kernelTime: 3), at: .seconds(3)).isEmpty)
        _ = machine.consume(line: ConsoleLine("Kernel panic - not syncing: VFS", kernelTime: 4), at: .seconds(4))
        #expect(machine.failure == nil)  // the trace is read first...
        _ = machine.consume(line: ConsoleLine("CPU: 0 PID: 1", kernelTime: 4), at: .seconds(4.1))
        let done = machine.consume(line: ConsoleLine("---[ end Kernel panic - not syncing: VFS ]---", kernelTime: 4), at: .seconds(4.2))
        guard case .failed(_, let at, .pattern(let name, _), let lines) = done.last else {
            Issue.record("no failure: \(done)")
            return
        }
        #expect(name == "kernel panic" && at == .seconds(4) && lines.count == 3)
    }
}
