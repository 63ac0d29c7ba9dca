/// Why a boot did not pass.
public enum FailureReason: Sendable, Equatable, CustomStringConvertible {
    /// The stage's pattern did not appear within its deadline.
    case deadline(seconds: Double)
    /// The overall --timeout ran out.
    case timeout(seconds: Double)
    /// A failure pattern matched this line.
    case pattern(name: String, line: String)
    /// The guest powered off, rebooted or crashed before the stage.
    case guestStopped
    /// Something after login went wrong (login refused, a command failed).
    case session(String)

    public var description: String {
        switch self {
        case .deadline(let seconds): return "not reached within its deadline of \(Int(seconds)) s"
        case .timeout(let seconds): return "the overall timeout of \(Int(seconds)) s ran out"
        case .pattern(let name, let line): return "\(name): \(TerminalSafe.text(line))"
        case .guestStopped: return "the guest stopped (powered off, rebooted or crashed) before reaching it"
        case .session(let text): return text
        }
    }
}

/// What the stage machine saw happen.
public enum StageEvent: Sendable, Equatable {
    case reached(stage: String, at: Duration, line: String, captures: [String])
    case warning(name: String, at: Duration, line: String)
    case failed(stage: String, at: Duration, reason: FailureReason)
}

/// Follows the console line by line and decides, stage by stage, whether the boot passes.
///
/// Pure logic: it is given lines and times and never waits itself, so it runs
/// the same against a real guest and against a recorded transcript.
public struct StageMachine: Sendable {
    public let plan: StagePlan
    /// Index of the stage being waited for; `plan.stages.count` once all are reached.
    public private(set) var current = 0
    public private(set) var failure: StageEvent?
    private var lastStageAt: Duration = .zero

    public init(plan: StagePlan) { self.plan = plan }

    public var passed: Bool { failure == nil && current == plan.stages.count }
    public var finished: Bool { failure != nil || current == plan.stages.count }
    /// The stage being waited for, or the last one once all passed.
    public var currentStageName: String {
        plan.stages.isEmpty ? "boot" : plan.stages[min(current, plan.stages.count - 1)].name
    }

    /// Checks a console line. `complete` is false for a line no newline has ended yet (a prompt).
    public mutating func consume(line: String, complete: Bool, at time: Duration) -> [StageEvent] {
        guard failure == nil else { return [] }
        var events: [StageEvent] = []
        for failurePattern in plan.failures where failurePattern.pattern.firstMatch(in: line) != nil {
            if failurePattern.warnOnly {
                if complete { events.append(.warning(name: failurePattern.name, at: time, line: line)) }
                continue
            }
            let event = StageEvent.failed(
                stage: currentStageName, at: time, reason: .pattern(name: failurePattern.name, line: line))
            failure = event
            events.append(event)
            return events
        }
        guard current < plan.stages.count else { return events }
        let stage = plan.stages[current]
        guard complete || stage.pattern.matchesPrompt else { return events }
        if let captures = stage.pattern.firstMatch(in: line) {
            events.append(.reached(stage: stage.name, at: time, line: line, captures: Array(captures.dropFirst())))
            current += 1
            lastStageAt = time
        }
        return events
    }

    /// Checks deadlines at `time`; returns the failure when one ran out.
    public mutating func check(at time: Duration) -> StageEvent? {
        guard failure == nil else { return nil }
        if current < plan.stages.count {
            let stage = plan.stages[current]
            if time - lastStageAt > stage.deadline {
                failure = .failed(stage: stage.name, at: time, reason: .deadline(seconds: stage.deadline.seconds))
                return failure
            }
        }
        if !finished, time > plan.timeout {
            failure = .failed(stage: currentStageName, at: time, reason: .timeout(seconds: plan.timeout.seconds))
            return failure
        }
        return nil
    }

    /// The console closed: the guest is gone.
    public mutating func guestStopped(at time: Duration) -> StageEvent? {
        guard !finished else { return nil }
        failure = .failed(stage: currentStageName, at: time, reason: .guestStopped)
        return failure
    }
}
