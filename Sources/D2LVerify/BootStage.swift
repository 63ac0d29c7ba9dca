/// One step of a boot that the console must show, in order, before its deadline.
public struct BootStage: Sendable {
    /// How a stage is recognised.
    public enum Kind: Sendable, Equatable {
        /// A console line matches the pattern.
        case line
        /// A getty's prompt: a line that matches and is still the last thing on the console a moment
        /// later, confirmed (on a live guest) by getty printing it again when d2l sends a newline.
        case prompt
    }

    public var name: String
    public var pattern: ConsolePattern
    /// Counted from the previous stage (or power-on for the first).
    public var deadline: Duration
    public var kind: Kind
    /// A banner the console shows once per boot (firmware, bootloader, kernel): seen again, the guest reset.
    public var isBanner: Bool
    /// Must be seen itself. A stage that is not required may go unseen (a `quiet` console hides the
    /// kernel's banner and systemd's) when a later stage proves it ran.
    public var isRequired: Bool

    public init(
        name: String, pattern: ConsolePattern, deadline: Duration, kind: Kind = .line, isBanner: Bool = false,
        isRequired: Bool = false
    ) {
        self.name = name
        self.pattern = pattern
        self.deadline = deadline
        self.kind = kind
        self.isBanner = isBanner
        self.isRequired = isRequired
    }
}

/// What a systemd `[FAILED]` line on the console does to the verdict.
public enum FailedUnitsPolicy: String, Sendable, Codable, CaseIterable {
    /// The boot fails at that line.
    case fail
    /// The line is reported as a warning.
    case warn
}

/// What non-fatal kernel events (WARNING, Oops, BUG, soft lockups, RCU stalls, hung tasks) do.
public enum KernelWarningsPolicy: String, Sendable, Codable, CaseIterable {
    /// They are reported, with their traces, as warnings.
    case warn
    /// They fail the boot (for bisecting a WARN regression).
    case fail
}

/// A console line that fails the boot, or is reported as a warning.
public struct FailurePattern: Sendable {
    /// Who prints the lines the pattern is for.
    public enum Source: Sendable, Equatable {
        /// Kernel messages: the pattern is anchored at the start of the message and matches only lines
        /// that carry a printk timestamp, once the console has shown one (a userspace line that merely
        /// contains the phrase is not a kernel message).
        case kernel
        /// Any console line (systemd, initramfs scripts, firmware, bootloaders).
        case console
    }

    public var name: String
    public var pattern: ConsolePattern
    public var source: Source
    /// Warn instead of failing (systemd's [FAILED] lines, non-fatal kernel events, when asked to).
    public var warnOnly: Bool
    /// The line that ends the report that starts here (`---[ end trace`, `</TASK>`): the lines up to it
    /// are kept with the failure or warning. nil: the line alone.
    public var endMarker: ConsolePattern?

    public init(
        name: String, pattern: ConsolePattern, source: Source = .console, warnOnly: Bool = false,
        endMarker: ConsolePattern? = nil
    ) {
        self.name = name
        self.pattern = pattern
        self.source = source
        self.warnOnly = warnOnly
        self.endMarker = endMarker
    }
}
