import D2LSupport

/// Why a boot did not pass.
public enum FailureReason: Sendable, Equatable, CustomStringConvertible {
    /// The stage's pattern did not appear within its deadline (nor any later stage's).
    case deadline(seconds: Double)
    /// The overall --timeout ran out.
    case timeout(seconds: Double)
    /// A failure pattern matched this line.
    case pattern(name: String, line: String)
    /// The console showed nothing for `seconds` after `lastLine`.
    case silence(seconds: Double, lastLine: String)
    /// A banner shown once per boot came again: the guest reset.
    case reset(banner: String, line: String)
    /// The guest stopped before the stage; `how` says what the console showed of it.
    case guestStopped(how: String)
    /// A stage that must be seen itself was not, although a later one was.
    case unseen(stage: String)
    /// Something after login went wrong (login refused, a command failed).
    case session(String)

    public var description: String {
        switch self {
        case .deadline(let seconds): return "not reached within its deadline of \(Int(seconds)) s"
        case .timeout(let seconds): return "the overall timeout of \(Int(seconds)) s ran out"
        case .pattern(let name, let line): return "\(name): \(TerminalSafe.text(line))"
        case .silence(let seconds, let line):
            return "no console output for \(Int(seconds)) s after \"\(TerminalSafe.text(String(line.prefix(120))))\""
        case .reset(let banner, let line):
            return "the guest reset during boot: a second \(banner) banner (\(TerminalSafe.text(line)))"
        case .guestStopped(let how): return how
        case .unseen(let stage):
            return "its line never appeared although later stages did: \(stage) cannot be proven"
        case .session(let text): return text
        }
    }
}

/// What the stage machine saw happen.
public enum StageEvent: Sendable, Equatable {
    case reached(stage: String, at: Duration, line: String, captures: [String])
    /// A stage that was not seen: a later one was (a quiet console), or its deadline passed and the
    /// machine waits for the next.
    case notSeen(stage: String, at: Duration)
    /// A warning with the lines that explain it (a failed unit, a kernel WARNING and its trace).
    case warning(name: String, at: Duration, lines: [String])
    /// Send a newline: a getty shows its prompt again, which confirms a prompt.
    case nudge(at: Duration)
    case failed(stage: String, at: Duration, reason: FailureReason, lines: [String])
}

/// Follows the console line by line and decides, stage by stage, whether the boot passes.
///
/// Pure logic: it is given lines and times and never waits itself, so it runs the same against a
/// real guest and against a recorded transcript. Where it needs the guest to act (to print a prompt
/// again) it asks for a `.nudge`; `canNudge` is false for a replay, which cannot answer.
public struct StageMachine: Sendable {
    public let plan: StagePlan
    public let canNudge: Bool
    /// Index of the stage being waited for; `plan.stages.count` once all are reached.
    public private(set) var current = 0
    public private(set) var failure: StageEvent?
    /// After the last stage: armed until this time, then passed.
    public private(set) var settledAt: Duration?
    /// In a session after login: only kernel messages are judged (the rest is the commands' output).
    public private(set) var inSession = false
    private var lastStageAt: Duration = .zero
    private var reachedBanners: [Int] = []
    private var lastOutputAt: Duration = .zero
    private var lastLine = "(nothing)"
    private var consoleHasTimestamps = false
    private var candidate: PromptCandidate?
    /// A report being read to its end marker: a fatal one (then `failure` waits for it) or a warning.
    private var collecting: [Collecting] = []

    private struct PromptCandidate: Sendable {
        var stage: Int
        var at: Duration
        var line: String
        /// Only a newline's reprint can confirm it (a prompt followed by other output).
        var needsReprint: Bool
        var nudgedAt: Duration?
        var linesSinceNudge = 0
    }

    private struct Collecting: Sendable {
        var pattern: FailurePattern
        var stage: String
        var at: Duration
        var lines: [String]
        var lastAt: Duration
    }

    /// The user name d2l types at the prompt: in a replayed log, `host login: USER` is the prompt's echo.
    public let typedUser: String?

    public init(plan: StagePlan, canNudge: Bool = true, typedUser: String? = nil) {
        self.plan = plan
        self.canNudge = canNudge
        self.typedUser = typedUser
    }

    /// Every stage reached and the settle time over (or a failure).
    public var finished: Bool { failure != nil || passed }
    public var passed: Bool { failure == nil && stagesDone && !settling && !fatalPending }
    /// Every stage reached (the machine may still be settling).
    public var stagesDone: Bool { current == plan.stages.count }
    private var settling = false
    /// A fatal kernel report is being read to its end: the failure is decided, its trace not yet complete.
    private var fatalPending: Bool { collecting.contains { !$0.pattern.warnOnly } }
    /// The stage being waited for, or the last one once all passed.
    public var currentStageName: String {
        plan.stages.isEmpty ? "boot" : plan.stages[min(current, plan.stages.count - 1)].name
    }

    /// From now on only kernel messages are judged, and there is no settle time: the session after
    /// login keeps the failure patterns armed until it ends.
    public mutating func enterSession() {
        inSession = true
        settling = false
        settledAt = nil
    }

    // MARK: Lines

    /// Checks a console line that a newline has ended.
    public mutating func consume(line: ConsoleLine, at time: Duration) -> [StageEvent] {
        guard failure == nil else { return [] }
        noteOutput(line.text, at: time)
        if line.isKernel { consoleHasTimestamps = true }
        var events: [StageEvent] = []
        // Reports being collected take their lines first.
        if let fatal = collectLine(line, at: time, events: &events) { return events + [fatal] }
        if let pattern = failurePattern(matching: line) {
            if pattern.endMarker != nil, pattern.endMarker?.firstMatch(in: line.text) == nil {
                // Read the report to its end (or for a moment) so that it holds the whole trace.
                collecting.append(
                    Collecting(pattern: pattern, stage: currentStageName, at: time, lines: [line.text], lastAt: time))
                return events
            }
            if let event = report(pattern, stage: currentStageName, at: time, lines: [line.text]) { events.append(event) }
            return events
        }
        if inSession { return events }
        if let reset = bannerRepeated(line.text, at: time) { return events + [reset] }
        events += promptLine(line.text, isKernel: line.isKernel, at: time)
        if failure != nil { return events }
        events += matchStage(line.text, at: time, complete: true)
        return events
    }

    /// Checks the line no newline has ended yet (where prompts are).
    public mutating func consume(partial: String, at time: Duration) -> [StageEvent] {
        guard failure == nil, !inSession, !partial.isEmpty else { return [] }
        noteOutput(partial, at: time)
        var events: [StageEvent] = []
        guard let index = reachablePromptStage(), plan.stages[index].pattern.firstMatch(in: partial) != nil else {
            return events
        }
        if var candidate, candidate.stage == index {
            // The prompt printed again after d2l's newline: confirmed. A prompt that other output followed
            // counts from the reprint, one that stayed last from when it was first shown.
            if candidate.nudgedAt != nil, candidate.linesSinceNudge > 0 {
                let (at, line) = candidate.needsReprint ? (time, partial) : (candidate.at, candidate.line)
                events += reach(index, at: at, line: line, captures: [])
                self.candidate = nil
            } else if !candidate.needsReprint, candidate.line != partial {
                candidate.line = partial
                self.candidate = candidate
            }
            return events
        }
        candidate = PromptCandidate(stage: index, at: time, line: partial, needsReprint: false)
        return events
    }

    private mutating func noteOutput(_ text: String, at time: Duration) {
        lastOutputAt = time
        if !text.allSatisfy(\.isWhitespace) { lastLine = text }
    }

    /// The failure pattern `line` matches, if any: kernel patterns only on kernel messages once the
    /// console has shown printk timestamps.
    private func failurePattern(matching line: ConsoleLine) -> FailurePattern? {
        for pattern in plan.failures {
            switch pattern.source {
            case .kernel:
                guard line.isKernel || !consoleHasTimestamps else { continue }
            case .console:
                if inSession { continue }
            }
            if pattern.pattern.firstMatch(in: line.text) != nil { return pattern }
        }
        return nil
    }

    /// A warning event, or (for a fatal pattern) the failure.
    private mutating func report(_ pattern: FailurePattern, stage: String, at time: Duration, lines: [String]) -> StageEvent? {
        if pattern.warnOnly { return .warning(name: pattern.name, at: time, lines: lines) }
        let event = StageEvent.failed(
            stage: stage, at: time, reason: .pattern(name: pattern.name, line: lines.first ?? ""), lines: lines)
        failure = event
        return event
    }

    /// Adds `line` to the reports being collected; returns a failure that is now complete.
    private mutating func collectLine(_ line: ConsoleLine, at time: Duration, events: inout [StageEvent]) -> StageEvent? {
        guard !collecting.isEmpty else { return nil }
        var stillOpen: [Collecting] = []
        var fatal: StageEvent?
        for var report in collecting {
            // A report is the kernel's: userspace text between its lines is not part of it.
            if line.isKernel || !consoleHasTimestamps {
                report.lines.append(line.text)
                report.lastAt = time
            }
            let ended = report.pattern.endMarker?.firstMatch(in: line.text) != nil && (line.isKernel || !consoleHasTimestamps)
            if ended || report.lines.count >= 80 {
                if let event = self.report(report.pattern, stage: report.stage, at: report.at, lines: report.lines) {
                    if case .failed = event { fatal = fatal ?? event } else { events.append(event) }
                }
            } else {
                stillOpen.append(report)
            }
        }
        collecting = stillOpen
        return fatal
    }

    // MARK: Stages

    /// The prompt stage a prompt may stand for: the current stage, or a later one when every stage
    /// before it may go unseen.
    private func reachablePromptStage() -> Int? {
        var index = current
        while index < plan.stages.count {
            if plan.stages[index].kind == .prompt { return index }
            if plan.stages[index].isRequired { return nil }
            index += 1
        }
        return nil
    }

    /// A complete line while a prompt is awaited: a prompt followed by a newline or other text on its
    /// line (only getty printing it again can confirm it), or output after a candidate prompt.
    private mutating func promptLine(_ text: String, isKernel: Bool, at time: Duration) -> [StageEvent] {
        guard let index = reachablePromptStage() else { return [] }
        let followed = Self.promptWithTrailingText(text)
        if !canNudge, let followed, let typedUser, text == followed + typedUser {
            // A recorded login: whoever recorded it typed the user name at this prompt.
            let at = candidate?.at ?? time
            return reach(index, at: at, line: followed, captures: [])
        }
        if var candidate {
            if candidate.nudgedAt != nil {
                // getty's answer to the newline ends the prompt's line; a kernel message cut out of it does not.
                if !isKernel { candidate.linesSinceNudge += 1 }
                self.candidate = candidate
                return []
            }
            // Output after the prompt: it was not the last thing on the console.
            if canNudge {
                candidate.needsReprint = true
                candidate.nudgedAt = time
                self.candidate = candidate
                return [.nudge(at: time)]
            }
            self.candidate = nil
            return []
        }
        let pattern = plan.stages[index].pattern
        guard canNudge, pattern.firstMatch(in: text) != nil || followed != nil else { return [] }
        candidate = PromptCandidate(
            stage: index, at: time, line: followed ?? text, needsReprint: true, nudgedAt: time, linesSinceNudge: 0)
        return [.nudge(at: time)]
    }

    /// `host login: some late message` -> `host login: `: a getty prompt that other output ran into.
    static func promptWithTrailingText(_ text: String) -> String? {
        guard let range = text.range(of: " login: "), range.upperBound < text.endIndex else { return nil }
        let before = text[..<range.lowerBound]
        guard !before.isEmpty, !before.contains(" ") else { return nil }
        return String(text[..<range.upperBound])
    }

    /// The stage `text` reaches: the current one, or a later one past stages that may go unseen.
    private mutating func matchStage(_ text: String, at time: Duration, complete: Bool) -> [StageEvent] {
        var index = current
        while index < plan.stages.count {
            let stage = plan.stages[index]
            if stage.kind == .line, let captures = stage.pattern.firstMatch(in: text) {
                if index > current, let required = plan.stages[current..<index].first(where: \.isRequired) {
                    let event = StageEvent.failed(
                        stage: required.name, at: time, reason: .unseen(stage: required.name), lines: [text])
                    failure = event
                    return [event]
                }
                return reach(index, at: time, line: text, captures: Array(captures.dropFirst()))
            }
            if stage.isRequired || stage.kind == .prompt { break }
            index += 1
        }
        return []
    }

    private mutating func reach(_ index: Int, at time: Duration, line: String, captures: [String]) -> [StageEvent] {
        var events: [StageEvent] = []
        for skipped in current..<index { events.append(.notSeen(stage: plan.stages[skipped].name, at: time)) }
        events.append(.reached(stage: plan.stages[index].name, at: time, line: line, captures: captures))
        if plan.stages[index].isBanner { reachedBanners.append(index) }
        current = index + 1
        lastStageAt = time
        candidate = nil
        unseenSinceDeadline = []
        if stagesDone, !inSession {
            settling = true
            settledAt = time + plan.settle
        }
        return events
    }

    /// A banner stage already passed, or the firmware's banner, shows again: the guest reset.
    private mutating func bannerRepeated(_ text: String, at time: Duration) -> StageEvent? {
        var repeated = reachedBanners.first { plan.stages[$0].pattern.firstMatch(in: text) != nil }
            .map { plan.stages[$0].name }
        for (index, banner) in plan.resetBanners.enumerated() where banner.pattern.firstMatch(in: text) != nil {
            if seenResetBanners.contains(index) { repeated = banner.name } else { seenResetBanners.insert(index) }
        }
        guard let repeated else { return nil }
        let event = StageEvent.failed(
            stage: currentStageName, at: time, reason: .reset(banner: repeated, line: text), lines: [text])
        failure = event
        return event
    }
    private var seenResetBanners: Set<Int> = []

    // MARK: Time

    /// Checks what time decides at `time`: prompts that stayed last, getty's reprint, reports whose
    /// trace window closed, deadlines, silence, the settle time and the overall timeout.
    public mutating func check(at time: Duration) -> [StageEvent] {
        guard failure == nil else { return [] }
        var events: [StageEvent] = []
        // Fatal reports complete after their window, warnings after a quiet second.
        var stillOpen: [Collecting] = []
        for report in collecting {
            let window = report.pattern.warnOnly ? Duration.seconds(1) : plan.traceWindow
            if time - report.lastAt >= window {
                if let event = self.report(report.pattern, stage: report.stage, at: report.at, lines: report.lines) {
                    events.append(event)
                    if case .failed = event { return events }
                }
            } else {
                stillOpen.append(report)
            }
        }
        collecting = stillOpen
        if fatalPending { return events }
        if let candidate {
            events += checkPrompt(candidate, at: time)
            if failure != nil { return events }
        }
        if settling, let settledAt, time >= settledAt {
            settling = false
            self.settledAt = nil
            return events
        }
        guard !stagesDone else {
            return events + timeoutCheck(at: time)
        }
        let stage = plan.stages[current]
        if time - lastStageAt > stage.deadline, candidate?.nudgedAt == nil {
            let isLast = current == plan.stages.count - 1
            if stage.isRequired || isLast {
                let first = unseenSinceDeadline.first ?? (stage.name, stage.deadline)
                // A console whose last line is a power-off or reset explains the wait better than the deadline.
                let reason = Self.explainedEnding([lastLine]).map { FailureReason.guestStopped(how: $0) }
                    ?? .deadline(seconds: first.deadline.seconds)
                let event = StageEvent.failed(stage: first.name, at: time, reason: reason, lines: [])
                failure = event
                return events + [event]
            }
            // Not seen in time: maybe a quiet console. Wait for the next stage from here.
            events.append(.notSeen(stage: stage.name, at: time))
            unseenSinceDeadline.append((stage.name, stage.deadline))
            current += 1
            lastStageAt = time
            return events
        }
        if let silence = plan.silence, time - lastOutputAt > silence {
            // Silent because it powered off or reset (a log that ends there): say so.
            let reason = Self.explainedEnding([lastLine]).map { FailureReason.guestStopped(how: $0) }
                ?? .silence(seconds: silence.seconds, lastLine: lastLine)
            let event = StageEvent.failed(stage: currentStageName, at: time, reason: reason, lines: [lastLine])
            failure = event
            return events + [event]
        }
        return events + timeoutCheck(at: time)
    }

    /// Stages skipped at their deadline since the last one reached: the first is named when the boot fails.
    private var unseenSinceDeadline: [(name: String, deadline: Duration)] = []

    private mutating func timeoutCheck(at time: Duration) -> [StageEvent] {
        guard !finished, time > plan.timeout else { return [] }
        let event = StageEvent.failed(
            stage: currentStageName, at: time, reason: .timeout(seconds: plan.timeout.seconds), lines: [])
        failure = event
        return [event]
    }

    private mutating func checkPrompt(_ prompt: PromptCandidate, at time: Duration) -> [StageEvent] {
        if let nudgedAt = prompt.nudgedAt {
            // getty did not print its prompt again: it was not a getty's.
            if time - nudgedAt >= plan.promptReprint { candidate = nil }
            return []
        }
        guard time - lastOutputAt >= plan.promptQuiet else { return [] }
        if !canNudge {
            return reach(prompt.stage, at: prompt.at, line: prompt.line, captures: [])
        }
        var nudged = prompt
        nudged.nudgedAt = time
        candidate = nudged
        return [.nudge(at: time)]
    }

    /// The console closed: the guest is gone. `lastLines` say how it went; `endedBy`, when given, says
    /// it instead (a replayed transcript that ended).
    public mutating func guestStopped(at time: Duration, lastLines: [String], endedBy: String? = nil) -> StageEvent? {
        guard !finished else { return nil }
        if let fatal = collecting.first(where: { !$0.pattern.warnOnly }) {
            return report(fatal.pattern, stage: fatal.stage, at: fatal.at, lines: fatal.lines)
        }
        if stagesDone {
            settling = false
            settledAt = nil
            return nil
        }
        let event = StageEvent.failed(
            stage: currentStageName, at: time, reason: .guestStopped(how: Self.explainedEnding(lastLines) ?? endedBy ?? Self.ending(lastLines)),
            lines: lastLines.suffix(3))
        failure = event
        return event
    }

    /// How a guest that stopped went, from its last console lines.
    public static func ending(_ lastLines: [String]) -> String {
        explainedEnding(lastLines)
            ?? "the guest stopped (QEMU exited) before reaching it, with no power-off or reset message on the console"
    }

    /// A power-off or reset the last console lines show, if any.
    static func explainedEnding(_ lastLines: [String]) -> String? {
        for line in lastLines.reversed() {
            if line.contains("reboot: Power down") || line.contains("System halted") {
                return "the guest powered off before reaching it (\(line))"
            }
            if line.contains("sysrq: Resetting") || line.contains("reboot: Restarting system") {
                return "the guest reset before reaching it (\(line))"
            }
        }
        return nil
    }
}
