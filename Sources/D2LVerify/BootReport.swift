import D2LSupport
import Foundation

/// One stage's outcome.
public struct StageResult: Sendable, Codable, Equatable {
    public var name: String
    public var reached: Bool
    /// Not seen itself (a quiet console), but a later stage proves it ran.
    public var unseen: Bool = false
    /// Seconds since power-on when the stage was reached (or failed).
    public var seconds: Double?
    /// The console line that proved it, cleaned.
    public var line: String?
    public var failure: String?

    public init(
        name: String, reached: Bool, unseen: Bool = false, seconds: Double? = nil, line: String? = nil,
        failure: String? = nil
    ) {
        self.name = name
        self.reached = reached
        self.unseen = unseen
        self.seconds = seconds
        self.line = line
        self.failure = failure
    }
}

/// One `--run` command's outcome.
public struct CommandResult: Sendable, Codable, Equatable {
    public var command: String
    public var exitStatus: Int?
    /// What the command wrote, as a terminal would show it, without the kernel's messages.
    public var output: String
    public var passed: Bool
}

/// A warning with the lines that explain it: a kernel WARNING, Oops, soft lockup, RCU stall or hung
/// task with its trace, a failed unit under `--failed-units warn`, a stage not seen.
public struct BootWarning: Sendable, Codable, Equatable {
    public var name: String
    public var seconds: Double
    public var lines: [String]

    /// `name at 12.3 s: first line`.
    public var summary: String {
        "\(name) at \(BootReport.format(seconds))" + (lines.first.map { ": \($0)" } ?? "")
    }
}

/// The verdict of one boot, and everything needed to explain it.
public struct BootReport: Sendable, Codable {
    /// What the run decided.
    public enum Outcome: String, Sendable, Codable {
        /// The disk booted (and every command passed).
        case passed
        /// The disk did not boot, or a command failed.
        case failed
        /// No verdict on the boot: the boot reached its prompt but the login was refused.
        case couldNotTest = "could-not-test"
    }

    public var image: String
    public var accelerator: String
    /// The firmware the disk booted under (bios, uefi, uefi-secure); nil for a direct kernel boot or a replay.
    public var firmware: String?
    public var outcome: Outcome
    /// `outcome == .passed`, kept in the JSON for scripts.
    public var passed: Bool
    public var verdict: String
    public var kernelVersion: String?
    public var operatingSystem: String?
    public var initSystem: String?
    public var stages: [StageResult]
    public var failedStage: String?
    public var reason: String?
    /// The lines that decided a failure (a kernel panic with its trace), when there are.
    public var failureLines: [String]
    public var warnings: [BootWarning]
    public var commands: [CommandResult]
    /// How the machine ended: powered off by the guest, destroyed by d2l, stopped at a failure.
    public var ending: String?
    /// Things the run did that a reader should know (newlines sent to confirm a prompt, the settle time).
    public var notes: [String]
    public var seconds: Double
    /// The console's last lines, on failure only.
    public var lastLines: [String]

    public init(
        image: String, accelerator: String, outcome: Outcome, kernelVersion: String?, operatingSystem: String?,
        initSystem: String?, stages: [StageResult], failedStage: String?, reason: String?, failureLines: [String] = [],
        warnings: [BootWarning], commands: [CommandResult], ending: String? = nil, notes: [String] = [],
        seconds: Double, lastLines: [String], firmware: String? = nil
    ) {
        self.firmware = firmware
        self.image = image
        self.accelerator = accelerator
        self.outcome = outcome
        passed = outcome == .passed
        switch outcome {
        case .passed: verdict = "booted"
        case .failed: verdict = "did not boot"
        case .couldNotTest: verdict = "could not test"
        }
        self.kernelVersion = kernelVersion
        self.operatingSystem = operatingSystem
        self.initSystem = initSystem
        self.stages = stages
        self.failedStage = failedStage
        self.reason = reason
        self.failureLines = failureLines
        self.warnings = warnings
        self.commands = commands
        self.ending = ending
        self.notes = notes
        self.seconds = seconds
        self.lastLines = lastLines
    }

    /// The report as pretty JSON.
    ///
    /// - Throws: `EncodingError` (not expected: every field encodes).
    public func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }

    /// JUnit XML: one test case per stage and per command; warnings as cases of their own whose
    /// `<system-out>` holds their lines.
    public func junit() -> String {
        func attr(_ text: String) -> String { XMLText.escape(Self.xmlSafe(text)) }
        let cases = stages.count + commands.count + warnings.count
        let failures = stages.filter { $0.failure != nil }.count + commands.filter { !$0.passed }.count
        let errors = outcome == .couldNotTest ? 1 : 0
        let skipped = stages.filter { !$0.reached && $0.failure == nil }.count
        var xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        let suite = "d2l verify \(image)" + (firmware.map { " (\($0))" } ?? "")
        xml += "<testsuite name=\"\(attr(suite))\" tests=\"\(cases)\" failures=\"\(failures - errors)\" "
        xml += "errors=\"\(errors)\" skipped=\"\(skipped)\" time=\"\(String(format: "%.3f", seconds))\">\n"
        var previous = 0.0
        for stage in stages {
            let time = max(0, (stage.seconds ?? previous) - previous)
            previous = stage.seconds ?? previous
            xml += "  <testcase classname=\"boot\" name=\"\(attr(stage.name))\" time=\"\(String(format: "%.3f", time))\">"
            if let failure = stage.failure {
                let element = outcome == .couldNotTest ? "error" : "failure"
                let body = (failureLines.isEmpty ? lastLines : failureLines).joined(separator: "\n")
                xml += "\n    <\(element) message=\"\(attr(failure))\">\(attr(body))</\(element)>\n  "
            } else if !stage.reached {
                xml += "<skipped/>"
            } else if stage.unseen {
                xml += "<system-out>not seen on the console; a later stage proves it ran</system-out>"
            }
            xml += "</testcase>\n"
        }
        for command in commands {
            xml += "  <testcase classname=\"run\" name=\"\(attr(command.command))\">"
            if !command.passed {
                let status = command.exitStatus.map(String.init) ?? "none"
                xml += "\n    <failure message=\"exit status \(status)\">\(attr(command.output))</failure>\n  "
            } else if !command.output.isEmpty {
                xml += "<system-out>\(attr(command.output))</system-out>"
            }
            xml += "</testcase>\n"
        }
        for warning in warnings {
            xml += "  <testcase classname=\"warning\" name=\"\(attr(warning.summary))\">"
            xml += "<system-out>\(attr(warning.lines.joined(separator: "\n")))</system-out></testcase>\n"
        }
        xml += "</testsuite>\n"
        return xml
    }

    /// Drops characters XML 1.0 cannot carry.
    static func xmlSafe(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.filter {
            $0.value == 0x9 || $0.value == 0xA || $0.value == 0xD || $0.value >= 0x20
        }))
    }

    /// The human summary printed at the end.
    public func summary() -> String {
        var lines: [String] = []
        let under = firmware.map { " under \($0)" } ?? ""
        switch outcome {
        case .passed:
            let last = stages.last { $0.reached }
            let unseen = stages.filter(\.unseen).map(\.name)
            lines.append(
                "booted\(under): \(stages.count) stages in \(Self.format(last?.seconds ?? seconds))"
                    + (kernelVersion.map { ", kernel \($0)" } ?? "")
                    + (unseen.isEmpty ? "" : " (not seen on the console: \(unseen.joined(separator: ", ")))"))
        case .failed, .couldNotTest:
            let at = stages.first { $0.failure != nil }?.seconds.map { " at " + Self.format($0) } ?? ""
            let verb = outcome == .couldNotTest ? "could not test" : "did not boot"
            lines.append("\(verb)\(under): stage \(failedStage ?? "?") failed\(at): \(reason ?? "unknown")")
            if failureLines.count > 1 {
                lines.append("the lines that decided it:")
                lines += failureLines.prefix(60).map { "  | " + TerminalSafe.text($0) }
            } else if !lastLines.isEmpty {
                lines.append("last console lines:")
                lines += lastLines.suffix(20).map { "  | " + TerminalSafe.text($0) }
            }
        }
        for warning in warnings {
            lines.append("warning: " + TerminalSafe.text(warning.summary))
            lines += warning.lines.dropFirst().prefix(40).map { "  | " + TerminalSafe.text($0) }
            if warning.lines.count > 41 { lines.append("  | (\(warning.lines.count - 41) more lines in the JSON report)") }
        }
        return lines.joined(separator: "\n")
    }

    static func format(_ seconds: Double) -> String { String(format: "%.1f s", seconds) }
}

/// The verdicts of one `d2l verify`: a boot per firmware (a hybrid disk boots under BIOS and UEFI).
public struct VerifyResult: Sendable, Codable {
    public var boots: [BootReport]
    /// Every boot passed.
    public var passed: Bool
    /// The worst outcome: failed over could-not-test over passed.
    public var outcome: BootReport.Outcome

    public init(boots: [BootReport]) {
        self.boots = boots
        passed = boots.allSatisfy(\.passed) && !boots.isEmpty
        if boots.contains(where: { $0.outcome == .failed }) {
            outcome = .failed
        } else if boots.contains(where: { $0.outcome == .couldNotTest }) {
            outcome = .couldNotTest
        } else {
            outcome = .passed
        }
    }

    /// One boot's report as it is, several as `{"boots": [...], "passed": ..., "outcome": ...}`.
    ///
    /// - Throws: `EncodingError` (not expected: every field encodes).
    public func json() throws -> String {
        if boots.count == 1 { return try boots[0].json() }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }

    /// JUnit XML with a test suite per boot.
    public func junit() -> String {
        if boots.count == 1 { return boots[0].junit() }
        let suites = boots.map { $0.junit().replacingOccurrences(of: "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n", with: "") }
        return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n" + suites.joined() + "</testsuites>\n"
    }

    /// Reads what `json()` wrote: one report or several.
    ///
    /// - Throws: `DecodingError` when the text is neither.
    public static func decode(_ data: Data) throws -> VerifyResult {
        if let single = try? JSONDecoder().decode(BootReport.self, from: data) { return VerifyResult(boots: [single]) }
        return try JSONDecoder().decode(VerifyResult.self, from: data)
    }
}
