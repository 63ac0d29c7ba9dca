import D2LDiskModel
import Foundation

/// The ordered stages and the failure patterns of one run.
public struct StagePlan: Sendable {
    public var stages: [BootStage]
    public var failures: [FailurePattern]
    public var timeout: Duration

    public init(stages: [BootStage], failures: [FailurePattern], timeout: Duration) {
        self.stages = stages
        self.failures = failures
        self.timeout = timeout
    }

    /// The init stage's pattern for each init system; unknown accepts any of them.
    public static func initPattern(for system: InitSystem) -> String {
        let systemd = #"Welcome to |systemd\[1\]"#
        let openrc = #"OpenRC .* is starting up"#
        let sysvinit = #"INIT: version \S+ booting"#
        let busybox = #"init started: BusyBox"#
        switch system {
        case .systemd: return systemd
        case .openrc: return "\(openrc)|\(sysvinit)"
        case .sysvinit: return "\(sysvinit)|\(openrc)"
        case .busybox: return busybox
        case .unknown: return [systemd, openrc, sysvinit, busybox].joined(separator: "|")
        }
    }

    /// bootloader, kernel, init (for `initSystem`) and login, with deadlines sized for TCG on a slow CI host.
    public static func defaultStages(initSystem: InitSystem = .unknown) -> [BootStage] {
        func stage(_ name: String, _ pattern: String, _ seconds: Int) -> BootStage {
            BootStage(name: name, pattern: ConsolePattern(builtIn: pattern), deadline: .seconds(seconds))
        }
        return [
            stage("bootloader", #"(SYS|EXT|ISO|PXE)LINUX \d+\.\d+"#, 60),
            stage("kernel", #"Linux version (\S+)"#, 60),
            stage("init", initPattern(for: initSystem), 120),
            stage("login", #"login:\s*$"#, 180),
        ]
    }

    /// The lines that prove a boot failed, whatever stage it reached; systemd's `[FAILED]` lines fail
    /// or warn as `failedUnits` says.
    public static func defaultFailures(failedUnits: FailedUnitsPolicy = .fail) -> [FailurePattern] {
        let patterns: [(String, String)] = [
            ("kernel panic", #"Kernel panic - not syncing|end Kernel panic"#),
            ("emergency mode", #"You are in emergency mode"#),
            ("maintenance shell", #"Give root password for maintenance"#),
            ("missing root device", #"ALERT! .* does not exist"#),
            ("initramfs shell", #"Dropping to a shell"#),
            ("firmware boot failure", #"Boot failed|No bootable device"#),
            ("bootloader error", #"Could not find kernel image|Load error"#),
        ]
        var failures = patterns.map { FailurePattern(name: $0.0, pattern: ConsolePattern(builtIn: $0.1)) }
        failures.append(
            FailurePattern(
                name: "systemd unit failed", pattern: ConsolePattern(builtIn: #"^\s*\[FAILED\]"#),
                warnOnly: failedUnits == .warn))
        return failures
    }

    /// Applies `--expect NAME=REGEX`: replaces a stage's pattern, or adds a stage at the end.
    public mutating func expect(_ name: String, _ pattern: ConsolePattern, deadline: Duration = .seconds(120)) {
        if let index = stages.firstIndex(where: { $0.name == name }) {
            stages[index].pattern = pattern
        } else {
            stages.append(BootStage(name: name, pattern: pattern, deadline: deadline))
        }
    }
}
