import D2LSupport
import Foundation

/// One stage's outcome.
public struct StageResult: Sendable, Codable, Equatable {
    public var name: String
    public var reached: Bool
    /// Seconds since power-on when the stage was reached (or failed).
    public var seconds: Double?
    /// The console line that proved it, cleaned.
    public var line: String?
    public var failure: String?
}

/// One `--run` command's outcome.
public struct CommandResult: Sendable, Codable, Equatable {
    public var command: String
    public var exitStatus: Int?
    public var output: String
    public var passed: Bool
}

/// The verdict of one boot, and everything needed to explain it.
public struct BootReport: Sendable, Codable {
    public var image: String
    public var accelerator: String
    public var passed: Bool
    public var verdict: String { passed ? "booted" : "did not boot" }
    public var kernelVersion: String?
    public var operatingSystem: String?
    public var initSystem: String?
    public var stages: [StageResult]
    public var failedStage: String?
    public var reason: String?
    public var warnings: [String]
    public var commands: [CommandResult]
    public var seconds: Double
    /// The console's last lines, on failure only.
    public var lastLines: [String]

    enum CodingKeys: String, CodingKey {
        case image, accelerator, passed, verdict, kernelVersion, operatingSystem, initSystem, stages
        case failedStage, reason, warnings, commands, seconds, lastLines
    }

    public init(
        image: String, accelerator: String, passed: Bool, kernelVersion: String?, operatingSystem: String?,
        initSystem: String?, stages: [StageResult], failedStage: String?, reason: String?, warnings: [String],
        commands: [CommandResult], seconds: Double, lastLines: [String]
    ) {
        self.image = image
        self.accelerator = accelerator
        self.passed = passed
        self.kernelVersion = kernelVersion
        self.operatingSystem = operatingSystem
        self.initSystem = initSystem
        self.stages = stages
        self.failedStage = failedStage
        self.reason = reason
        self.warnings = warnings
        self.commands = commands
        self.seconds = seconds
        self.lastLines = lastLines
    }

    /// - Throws: `DecodingError` for JSON that is not a report.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        image = try c.decode(String.self, forKey: .image)
        accelerator = try c.decode(String.self, forKey: .accelerator)
        passed = try c.decode(Bool.self, forKey: .passed)
        kernelVersion = try c.decodeIfPresent(String.self, forKey: .kernelVersion)
        operatingSystem = try c.decodeIfPresent(String.self, forKey: .operatingSystem)
        initSystem = try c.decodeIfPresent(String.self, forKey: .initSystem)
        stages = try c.decode([StageResult].self, forKey: .stages)
        failedStage = try c.decodeIfPresent(String.self, forKey: .failedStage)
        reason = try c.decodeIfPresent(String.self, forKey: .reason)
        warnings = try c.decode([String].self, forKey: .warnings)
        commands = try c.decode([CommandResult].self, forKey: .commands)
        seconds = try c.decode(Double.self, forKey: .seconds)
        lastLines = try c.decode([String].self, forKey: .lastLines)
    }

    /// - Throws: `EncodingError` from the encoder.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(image, forKey: .image)
        try c.encode(accelerator, forKey: .accelerator)
        try c.encode(passed, forKey: .passed)
        try c.encode(verdict, forKey: .verdict)
        try c.encodeIfPresent(kernelVersion, forKey: .kernelVersion)
        try c.encodeIfPresent(operatingSystem, forKey: .operatingSystem)
        try c.encodeIfPresent(initSystem, forKey: .initSystem)
        try c.encode(stages, forKey: .stages)
        try c.encodeIfPresent(failedStage, forKey: .failedStage)
        try c.encodeIfPresent(reason, forKey: .reason)
        try c.encode(warnings, forKey: .warnings)
        try c.encode(commands, forKey: .commands)
        try c.encode(seconds, forKey: .seconds)
        try c.encode(lastLines, forKey: .lastLines)
    }

    /// The report as pretty JSON.
    ///
    /// - Throws: `EncodingError` (not expected: every field encodes).
    public func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }

    /// JUnit XML: one test case per stage (and per command).
    public func junit() -> String {
        func attr(_ text: String) -> String { XMLText.escape(Self.xmlSafe(text)) }
        let cases = stages.count + commands.count
        let failures = stages.filter { $0.failure != nil }.count + commands.filter { !$0.passed }.count
        let skipped = stages.filter { !$0.reached && $0.failure == nil }.count
        var xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        xml += "<testsuite name=\"d2l verify \(attr(image))\" tests=\"\(cases)\" failures=\"\(failures)\" "
        xml += "skipped=\"\(skipped)\" time=\"\(String(format: "%.3f", seconds))\">\n"
        var previous = 0.0
        for stage in stages {
            let time = max(0, (stage.seconds ?? previous) - previous)
            previous = stage.seconds ?? previous
            xml += "  <testcase classname=\"boot\" name=\"\(attr(stage.name))\" time=\"\(String(format: "%.3f", time))\">"
            if let failure = stage.failure {
                xml += "\n    <failure message=\"\(attr(failure))\">\(attr(lastLines.joined(separator: "\n")))</failure>\n  "
            } else if !stage.reached {
                xml += "<skipped/>"
            }
            xml += "</testcase>\n"
        }
        for command in commands {
            xml += "  <testcase classname=\"run\" name=\"\(attr(command.command))\">"
            if !command.passed {
                let status = command.exitStatus.map(String.init) ?? "none"
                xml += "\n    <failure message=\"exit status \(status)\">\(attr(command.output))</failure>\n  "
            }
            xml += "</testcase>\n"
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
        if passed {
            let last = stages.last { $0.reached }
            lines.append("booted: \(stages.count) stages in \(Self.format(last?.seconds ?? seconds))"
                + (kernelVersion.map { ", kernel \($0)" } ?? ""))
        } else {
            let at = stages.first { $0.failure != nil }?.seconds.map { " at " + Self.format($0) } ?? ""
            lines.append("did not boot: stage \(failedStage ?? "?") failed\(at): \(reason ?? "unknown")")
            if !lastLines.isEmpty {
                lines.append("last console lines:")
                lines += lastLines.suffix(20).map { "  | " + TerminalSafe.text($0) }
            }
        }
        return lines.joined(separator: "\n")
    }

    static func format(_ seconds: Double) -> String { String(format: "%.1f s", seconds) }
}
