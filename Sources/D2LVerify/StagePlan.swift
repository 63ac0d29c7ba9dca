import D2LDiskModel
import Foundation

/// The ordered stages, the failure patterns and the time limits of one run.
public struct StagePlan: Sendable {
    public var stages: [BootStage]
    public var failures: [FailurePattern]
    /// The overall limit.
    public var timeout: Duration
    /// A boot whose console shows nothing for this long before its last stage fails ("no console output
    /// for N s after <line>"); nil: no limit but the deadlines.
    public var silence: Duration?
    /// After the last stage, how long failure patterns stay armed before the boot passes (a crash right
    /// after the login prompt is still a failed boot).
    public var settle: Duration
    /// How long a prompt must stay the last thing on the console before it counts (and, on a live guest,
    /// before d2l sends a newline to see getty print it again).
    public var promptQuiet: Duration = .milliseconds(500)
    /// How long getty has to print its prompt again after d2l's newline.
    public var promptReprint: Duration = .seconds(5)
    /// How long the lines after a fatal kernel message are still read into the report.
    public var traceWindow: Duration = .milliseconds(800)
    /// Banners a console shows once per boot besides the stages' (the firmware's): seen twice, the
    /// guest reset.
    public var resetBanners: [(name: String, pattern: ConsolePattern)] = [
        ("firmware (SeaBIOS)", ConsolePattern(builtIn: #"^SeaBIOS \(version "#))
    ]

    public static let defaultSilence: Duration = .seconds(180)
    public static let defaultSettle: Duration = .seconds(8)

    public init(
        stages: [BootStage], failures: [FailurePattern], timeout: Duration, silence: Duration? = defaultSilence,
        settle: Duration = defaultSettle
    ) {
        self.stages = stages
        self.failures = failures
        self.timeout = timeout
        self.silence = silence
        self.settle = settle
    }

    /// The init stage's pattern for each init system; unknown accepts any of them.
    ///
    /// systemd's banner must be the real root's: `Welcome to` followed by the disk's PRETTY_NAME when it
    /// is known, and never one that names an initramfs or initrd (dracut's initramfs runs systemd too
    /// and greets with `Welcome to ... (Initramfs)!` before the root is mounted).
    public static func initPattern(for system: InitSystem, osName: String? = nil) -> String {
        let notInitrd = #"(?!.*(?i:initramfs|initrd))"#
        let systemd = "Welcome to " + notInitrd + (osName.map { NSRegularExpression.escapedPattern(for: $0) } ?? "")
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

    /// What the firmware prints when it starts the disk's loader: SeaBIOS's banner (mirrored to the
    /// serial port), OVMF's `BdsDxe: starting Boot0001 "..."`.
    public static func firmwarePattern(_ firmware: Firmware) -> String {
        switch firmware {
        case .bios: return #"^SeaBIOS \(version "#
        case .uefi, .uefiSecure: return #"BdsDxe: starting Boot"#
        }
    }

    /// What each loader shows. syslinux prints its banner (twice: boot sector, then ldlinux);
    /// systemd-boot with `timeout 0` prints nothing itself, but the kernel's EFI stub it starts says
    /// how it got its initrd; GRUB shows its banner or, likewise, the stub's line.
    public static func bootloaderPattern(firmware: Firmware?, loader: EFILoader?) -> String {
        let syslinux = #"(SYS|EXT|ISO|PXE)LINUX \d+\.\d+"#
        let stub = #"^EFI stub: "#
        let grub = #"Welcome to GRUB|GNU GRUB"#
        switch (firmware, loader) {
        case (.bios?, _): return syslinux
        case (_, .systemdBoot?): return #"systemd-boot|"# + stub
        case (_, .shim?), (_, .grub?): return grub + "|" + stub
        case (_, nil): return [syslinux, grub, stub].joined(separator: "|")  // not known: any of them
        }
    }

    /// firmware (when booted under one), bootloader, kernel, init (for `initSystem`) and login, with
    /// deadlines sized for TCG on a slow CI host.
    public static func defaultStages(
        initSystem: InitSystem = .unknown, osName: String? = nil, firmware: Firmware? = nil, loader: EFILoader? = nil
    ) -> [BootStage] {
        func stage(_ name: String, _ pattern: String, _ seconds: Int, banner: Bool = false) -> BootStage {
            BootStage(name: name, pattern: ConsolePattern(builtIn: pattern), deadline: .seconds(seconds), isBanner: banner)
        }
        let first: [BootStage] = firmware.map { [stage("firmware", firmwarePattern($0), 60, banner: true)] } ?? []
        return first + [
            stage("bootloader", bootloaderPattern(firmware: firmware, loader: loader), 60),
            stage("kernel", #"^Linux version (\S+)"#, 60, banner: true),
            stage("init", initPattern(for: initSystem, osName: osName), 120),
            BootStage(name: "login", pattern: ConsolePattern(builtIn: #"login:\s*$"#), deadline: .seconds(180), kind: .prompt),
        ]
    }

    /// The lines that prove a boot failed, whatever stage it reached; systemd's `[FAILED]` lines and
    /// non-fatal kernel events fail or warn as the policies say.
    public static func defaultFailures(
        failedUnits: FailedUnitsPolicy = .fail, kernelWarnings: KernelWarningsPolicy = .warn
    ) -> [FailurePattern] {
        func console(_ name: String, _ pattern: String) -> FailurePattern {
            FailurePattern(name: name, pattern: ConsolePattern(builtIn: pattern))
        }
        let endTrace = ConsolePattern(builtIn: #"^---\[ end trace|^</TASK>"#)
        func kernel(_ name: String, _ pattern: String, warn: Bool, end: ConsolePattern) -> FailurePattern {
            FailurePattern(name: name, pattern: ConsolePattern(builtIn: pattern), source: .kernel, warnOnly: warn, endMarker: end)
        }
        let warn = kernelWarnings == .warn
        return [
            kernel("kernel panic", #"^Kernel panic - not syncing"#, warn: false, end: ConsolePattern(builtIn: #"^---\[ end Kernel panic"#)),
            kernel("kernel warning", #"^WARNING: .* at "#, warn: warn, end: endTrace),
            kernel("kernel oops", #"^Oops: |^BUG: (?!soft lockup)"#, warn: warn, end: endTrace),
            kernel("soft lockup", #"^watchdog: BUG: soft lockup"#, warn: warn, end: endTrace),
            kernel("RCU stall", #"^rcu: INFO: rcu_\w+ (self-)?detected stall|^INFO: rcu_\w+ (self-)?detected stall"#, warn: warn, end: endTrace),
            kernel("hung task", #"^INFO: task \S+ blocked for more than"#, warn: warn, end: endTrace),
            console("emergency mode", #"You are in emergency mode"#),
            console("rescue mode", #"You are in rescue mode"#),
            console("maintenance shell", #"Give root password for maintenance|Press Enter for maintenance"#),
            console("console locked", #"Cannot open access to console, the root account is locked"#),
            console("missing root device", #"ALERT! .* does not exist"#),
            console("initramfs shell", #"Dropping to a shell|Spawning shell within the initramfs|^\(initramfs\)\s*$"#),
            console("device timeout", #"Timed out waiting for device"#),
            console("firmware boot failure", #"Boot failed|No bootable device"#),
            // A disk device with no \EFI\BOOT\BOOTX64.EFI (an empty DVD drive's "Not Found" is not the disk's).
            console(
                "UEFI firmware found no loader on the disk",
                #"^(?!.*(DVD-ROM|CDROM|PXEv|HTTPv)).*BdsDxe: failed to load Boot\S+ .*: Not Found"#),
            console("Secure Boot refused the loader (not signed by a key the firmware trusts)", #"BdsDxe: failed to load Boot\S+ .*: Access Denied"#),
            console("bootloader error", #"Could not find kernel image|Load error"#),
            FailurePattern(
                name: "systemd unit failed", pattern: ConsolePattern(builtIn: #"^\s*\[FAILED\]"#),
                warnOnly: failedUnits == .warn),
        ]
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
