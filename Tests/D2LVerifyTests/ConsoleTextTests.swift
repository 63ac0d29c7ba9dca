import D2LDiskModel
import Foundation
import Testing
@testable import D2LVerify

@Suite struct ConsoleTextTests {
    func lines(_ text: String, chunk: Int = 3) -> ([String], String) {
        var console = ConsoleText()
        var out: [String] = []
        let bytes = Array(text.utf8)
        for start in stride(from: 0, to: bytes.count, by: chunk) {
            out += console.append(bytes[start..<min(start + chunk, bytes.count)])
        }
        return (out, console.partialLine)
    }

    @Test func stripsANSIEscapesEvenAcrossChunks() {
        let (out, _) = lines("Welcome to \u{1B}[1mDebian GNU/Linux 12 (bookworm)\u{1B}[0m!\r\n\u{1B}]0;title\u{07}ok\r\n")
        #expect(out == ["Welcome to Debian GNU/Linux 12 (bookworm)!", "ok"])
    }

    @Test func removesPrintkTimestampAtLineStart() {
        let (out, _) = lines("[    0.000000] Linux version 6.1.0-50-amd64 (x)\r\n")
        #expect(out == ["Linux version 6.1.0-50-amd64 (x)"])
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
        for line in ["Welcome to Debian!", "systemd[1]: Foo", "OpenRC 0.45.2 is starting up Linux", "init started: BusyBox v1.36"] {
            #expect(stages[2].pattern.firstMatch(in: line) != nil, "\(line)")
        }
        #expect(stages[3].pattern.matchesPrompt)
        #expect(stages[3].pattern.firstMatch(in: "Last login: Mon Nov 3") == nil)
        #expect(StagePlan.defaultFailures().allSatisfy { !$0.pattern.source.isEmpty })
    }

    @Test func stagesMustComeInOrder() {
        var machine = StageMachine(plan: plan())
        // A login prompt before the kernel does not count.
        #expect(machine.consume(line: "login: ", complete: true, at: .seconds(1)).isEmpty)
        #expect(machine.current == 0)
        _ = machine.consume(line: "SYSLINUX 6.04", complete: true, at: .seconds(2))
        _ = machine.consume(line: "Linux version 6.1.0 (x)", complete: true, at: .seconds(3))
        #expect(machine.current == 2)
    }

    @Test func partialLinesOnlyMatchPrompts() {
        var machine = StageMachine(plan: plan())
        _ = machine.consume(line: "SYSLINUX 6.04", complete: true, at: .seconds(1))
        // "Linux version 6.1" may still be growing: its version must not be captured early.
        #expect(machine.consume(line: "Linux version 6.1", complete: false, at: .seconds(2)).isEmpty)
    }

    @Test func deadlineCountsFromThePreviousStage() {
        var machine = StageMachine(plan: plan(deadline: .seconds(10), timeout: .seconds(100)))
        _ = machine.consume(line: "SYSLINUX 6.04", complete: true, at: .seconds(8))
        #expect(machine.check(at: .seconds(17)) == nil)
        let failure = machine.check(at: .seconds(18.5))
        #expect(failure == .failed(stage: "kernel", at: .seconds(18.5), reason: .deadline(seconds: 10)))
    }
}
