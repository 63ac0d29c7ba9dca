/// One step of a boot that the console must show, in order, before its deadline.
public struct BootStage: Sendable {
    public var name: String
    public var pattern: ConsolePattern
    /// Counted from the previous stage (or power-on for the first).
    public var deadline: Duration

    public init(name: String, pattern: ConsolePattern, deadline: Duration) {
        self.name = name
        self.pattern = pattern
        self.deadline = deadline
    }
}

/// What a systemd `[FAILED]` line on the console does to the verdict.
public enum FailedUnitsPolicy: String, Sendable, Codable, CaseIterable {
    /// The boot fails at that line.
    case fail
    /// The line is reported as a warning.
    case warn
}

/// A console line that ends the run at once.
public struct FailurePattern: Sendable {
    public var name: String
    public var pattern: ConsolePattern
    /// Warn instead of failing (systemd's [FAILED] lines when asked to).
    public var warnOnly: Bool

    public init(name: String, pattern: ConsolePattern, warnOnly: Bool = false) {
        self.name = name
        self.pattern = pattern
        self.warnOnly = warnOnly
    }
}
