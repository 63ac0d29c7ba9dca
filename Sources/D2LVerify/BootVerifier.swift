import D2LDiskModel
import Foundation

/// `--login USER[:PASSWORD]`.
public struct LoginCredentials: Sendable {
    public var user: String
    public var password: String?

    public init(user: String, password: String?) {
        self.user = user
        self.password = password
    }

    /// Parses `root` or `root:secret`.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        guard let user = parts.first, !user.isEmpty else { return nil }
        self.user = String(user)
        password = parts.count > 1 ? String(parts[1]) : nil
    }
}

/// A `--run` command and what its output must show.
public struct GuestCommand: Sendable {
    public var command: String
    /// When given, the output decides and the exit status is only reported.
    public var expectOutput: ConsolePattern?

    public init(command: String, expectOutput: ConsolePattern? = nil) {
        self.command = command
        self.expectOutput = expectOutput
    }
}

/// What to check in one boot.
public struct VerifyOptions: Sendable {
    public var plan: StagePlan
    public var login: LoginCredentials?
    public var commands: [GuestCommand]
    public var loginDeadline: Duration = .seconds(60)
    public var commandDeadline: Duration = .seconds(180)
    /// From `poweroff` typed to the guest stopping. sysvinit's shutdown scripts (DHCP release, clock,
    /// swap, unmounts) took 90 s under TCG on a loaded two-core machine: a hung shutdown still fails.
    public var poweroffDeadline: Duration = .seconds(180)
    /// Command output kept in the report, per command.
    public var outputLimit = 64 << 10
    /// What an end of the console means when it is not a guest stopping (a replayed log that ended).
    public var endOfConsole: String?

    public init(plan: StagePlan, login: LoginCredentials? = nil, commands: [GuestCommand] = []) {
        self.plan = plan
        self.login = login
        self.commands = commands
    }
}

/// What the verifier tells its caller while it runs.
public enum VerifyProgress: Sendable {
    case poweredOn
    case stageReached(name: String, seconds: Double, detail: String)
    case stageNotSeen(name: String, seconds: Double)
    case warning(BootWarning)
    /// A newline was sent so that getty shows its prompt again.
    case nudged(seconds: Double)
    case commandFinished(CommandResult)
    case poweredOff(seconds: Double)
    /// Decided; the machine is torn down after this.
    case verdict(BootReport)
}

/// The raw console of one boot and when each piece of it came.
public struct ConsoleRecording: Sendable {
    public var bytes: [UInt8]
    /// scriptreplay(1)'s classic timing format: `<seconds since the previous chunk> <bytes>` per line.
    public var timing: String

    /// Writes the bytes to `path` and the timing beside it, to `path.timing` (what `--replay` reads).
    public func write(to path: String) {
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        _ = FileManager.default.createFile(atPath: path + ".timing", contents: Data(timing.utf8))
    }
}

/// Boots a machine and follows its console until a verdict.
public struct BootVerifier: Sendable {
    public let hypervisor: any Hypervisor
    public let options: VerifyOptions

    public init(hypervisor: any Hypervisor, options: VerifyOptions) {
        self.hypervisor = hypervisor
        self.options = options
    }

    /// Boots `machine` and returns the verdict.
    ///
    /// - Throws: `VerifyError.hypervisor` or `LibvirtError` only when it could not test (the hypervisor
    ///   failed); a boot that fails is a report.
    public func verify(
        _ machine: MachineSpec, guest: GuestFacts? = nil, transcript: ((ConsoleRecording) -> Void)? = nil,
        progress: @escaping @Sendable (VerifyProgress) -> Void = { _ in }
    ) async throws -> BootReport {
        let console = try await hypervisor.powerOn(machine)
        let session = ConsoleSession(console: console, stopwatch: hypervisor.stopwatch)
        progress(.poweredOn)
        var run = Run(
            machine: StageMachine(plan: options.plan, canNudge: hypervisor.answersInput, typedUser: options.login?.user),
            progress: progress,
            wantsLogin: options.login != nil, endOfConsole: options.endOfConsole, answersInput: hypervisor.answersInput)
        do {
            try await run.boot(session)
            if run.machine.stagesDone, run.machine.failure == nil, let login = options.login {
                await run.afterLogin(session, login: login, options: options)
            }
        } catch {
            console.destroy()
            transcript?(ConsoleRecording(bytes: session.transcript, timing: session.timingFile))
            throw error
        }
        var report = run.report(
            image: machine.diskPath, accelerator: machine.accelerator, guest: guest, session: session)
        if machine.directBoot == nil, !(hypervisor is ReplayHypervisor) { report.firmware = machine.firmware.rawValue }
        // The verdict goes out before the teardown: destroying a QEMU process takes a second or two.
        transcript?(ConsoleRecording(bytes: session.transcript, timing: session.timingFile))
        progress(.verdict(report))
        console.destroy()
        return report
    }
}

/// The mutable state of one verification.
private struct Run {
    var machine: StageMachine
    let progress: @Sendable (VerifyProgress) -> Void
    let wantsLogin: Bool
    let endOfConsole: String?
    /// A replayed log answers nothing: its commands' markers are whatever the recording's were.
    let answersInput: Bool
    var reached: [String: (seconds: Double, line: String)] = [:]
    var unseen: Set<String> = []
    var kernelVersion: String?
    var warnings: [BootWarning] = []
    var failureLines: [String] = []
    var commands: [CommandResult] = []
    var sessionFailure: (stage: String, seconds: Double, reason: String, couldNotTest: Bool)?
    var ending: String?
    var nudges = 0
    var notes: [String] = []
    /// The newest kernel message seen live: its printk time and when it came. It tells the kernel's
    /// messages printed now from old ones a command prints (`dmesg`), which carry old timestamps.
    var kernelClock: (kernel: Double, at: Duration)?
    var end: Duration = .zero

    init(
        machine: StageMachine, progress: @escaping @Sendable (VerifyProgress) -> Void, wantsLogin: Bool,
        endOfConsole: String?, answersInput: Bool
    ) {
        self.answersInput = answersInput
        self.machine = machine
        self.progress = progress
        self.wantsLogin = wantsLogin
        self.endOfConsole = endOfConsole
    }

    /// Done with the boot: decided, settled, or ready for the login conversation.
    private var bootDone: Bool { machine.finished || (wantsLogin && machine.stagesDone) }

    /// Follows the console until every stage is reached (and the boot settled) or it fails.
    mutating func boot(_ session: ConsoleSession) async throws {
        while !bootDone {
            let event = await session.next()
            let now = session.now
            switch event {
            case .lines(let lines, let partial):
                for (index, line) in lines.enumerated() {
                    if let stamp = line.kernelTime { noteKernelClock(stamp, at: now) }
                    handle(machine.consume(line: line, at: now), session: session)
                    if bootDone {
                        // What follows belongs to the login conversation.
                        session.unread(lines.dropFirst(index + 1))
                        break
                    }
                }
                if !bootDone { handle(machine.consume(partial: partial, at: now), session: session) }
                if !bootDone { handle(machine.check(at: now), session: session) }
            case .tick:
                handle(machine.check(at: now), session: session)
            case .closed(let error):
                if let error, !machine.stagesDone {
                    throw VerifyError.hypervisor("the console failed: \(error)", underlying: error)
                }
                if let failure = machine.guestStopped(at: now, lastLines: session.lastLines(5), endedBy: endOfConsole) {
                    handle([failure], session: session)
                }
                ending = endOfConsole ?? StageMachine.ending(session.lastLines(5))
                end = session.now
                if machine.stagesDone, machine.failure == nil { return }
            }
        }
        end = session.now
    }

    private mutating func handle(_ events: [StageEvent], session: ConsoleSession) {
        for event in events {
            switch event {
            case .reached(let stage, let at, let line, let captures):
                reached[stage] = (at.seconds, line)
                var detail = line
                if stage == "kernel", let version = captures.first, !version.isEmpty {
                    kernelVersion = version
                    detail = "Linux \(version)"
                }
                progress(.stageReached(name: stage, seconds: at.seconds, detail: detail))
            case .notSeen(let stage, let at):
                unseen.insert(stage)
                progress(.stageNotSeen(name: stage, seconds: at.seconds))
            case .warning(let name, let at, let lines):
                let warning = BootWarning(name: name, seconds: at.seconds, lines: lines)
                warnings.append(warning)
                progress(.warning(warning))
            case .nudge(let at):
                nudges += 1
                try? session.type("\r")
                progress(.nudged(seconds: at.seconds))
            case .failed(_, _, _, let lines):
                failureLines = lines  // the failure itself is kept in machine.failure
            }
        }
    }

    // MARK: After login

    struct SessionFailure: Error {
        var reason: String
        /// A refused login is no verdict on the boot.
        var couldNotTest = false
    }

    private mutating func noteKernelClock(_ stamp: Double, at now: Duration) {
        if stamp >= (kernelClock?.kernel ?? -1) { kernelClock = (stamp, now) }
    }

    /// Whether a timestamped line is the kernel speaking now, not a command printing old messages:
    /// its timestamp is no older than the kernel's clock at the last live message, run forward to now,
    /// less a few seconds for the console's lag.
    private func isLive(_ line: ConsoleLine, at now: Duration) -> Bool {
        guard let stamp = line.kernelTime else { return false }
        guard let clock = kernelClock else { return true }
        return stamp >= clock.kernel + (now - clock.at).seconds - 5
    }

    /// Logs in, runs the commands, ends the session. Failures are recorded, not thrown.
    mutating func afterLogin(_ session: ConsoleSession, login: LoginCredentials, options: VerifyOptions) async {
        machine.enterSession()
        var stage = "login as \(login.user)"
        do {
            try await logIn(session, login: login, deadline: options.loginDeadline)
            for command in options.commands {
                stage = "run: \(command.command)"
                let result = try await run(session, command: command, options: options)
                commands.append(result)
                progress(.commandFinished(result))
                if !result.passed {
                    let status = result.exitStatus.map(String.init) ?? "unknown"
                    let why = command.expectOutput.map { "output did not match \($0.source)" } ?? "exit status \(status)"
                    throw SessionFailure(reason: "command failed (\(why))")
                }
            }
            stage = "end of session"
            if !answersInput {
                ending = endOfConsole ?? "the log ended"  // a replayed session ends with its log
            } else if login.user == "root" {
                try session.type("poweroff\r")
                try await waitForPowerOff(session, deadline: options.poweroffDeadline)
                ending = "powered off by the guest (poweroff)"
                progress(.poweredOff(seconds: session.now.seconds))
            } else {
                // Only root may power off: the session ends with the domain destroyed from outside.
                ending = "destroyed by d2l after the commands (\(login.user) may not power off)"
            }
        } catch let failure as SessionFailure {
            sessionFailure = (stage, session.now.seconds, failure.reason, failure.couldNotTest)
        } catch {
            sessionFailure = (stage, session.now.seconds, "\(error)", false)
        }
        end = session.now
    }

    private mutating func logIn(_ session: ConsoleSession, login: LoginCredentials, deadline: Duration) async throws {
        let shell = ConsolePattern(builtIn: #"[#$]\s*$"#)
        let password = ConsolePattern(builtIn: #"[Pp]assword:\s*$"#)
        let incorrect = ConsolePattern(builtIn: #"Login incorrect|Authentication failure|Permission denied"#)
        let prompt = ConsolePattern(builtIn: #"login:\s*$"#)
        try session.type(login.user + "\r")
        // The prompt counts as come back only once the user name's echo has ended its line: the prompt
        // still on the console when d2l typed is not an answer.
        var (index, _) = try await waitFor(
            session, [shell, password, incorrect, prompt], deadline: deadline, afterALine: [3]
        ) {
            SessionFailure(reason: "no answer to the user name \(login.user) within \(Int(deadline.seconds)) s", couldNotTest: true)
        }
        if !answersInput {
            // A replayed log: the prompts getty printed again for d2l's newlines come before the user name.
            while index == 3 {
                (index, _) = try await waitFor(session, [shell, password, incorrect, prompt], deadline: deadline, afterALine: [3]) {
                    SessionFailure(reason: "no answer to the user name \(login.user) in the log", couldNotTest: true)
                }
            }
        }
        switch index {
        case 1:
            try session.type((login.password ?? "") + "\r")
            (index, _) = try await waitFor(session, [shell, incorrect, prompt], deadline: deadline, afterALine: [2]) {
                SessionFailure(reason: "no shell prompt within \(Int(deadline.seconds)) s of the password", couldNotTest: true)
            }
            if index != 0 {
                throw SessionFailure(reason: "the guest refused the password for \(login.user) (Login incorrect)", couldNotTest: true)
            }
        case 2:
            throw SessionFailure(reason: "the guest refused the login \(login.user) without asking for a password", couldNotTest: true)
        case 3:
            throw SessionFailure(
                reason: "the login prompt came back after the user name \(login.user): the guest has no working login program",
                couldNotTest: true)
        default:
            break
        }
    }

    /// Types the command between two markers and reads what it wrote and its exit status.
    ///
    /// The typed line quotes the markers, so only the shell's output can match them; kernel messages
    /// printed meanwhile are judged as kernel messages and kept out of the output.
    private mutating func run(_ session: ConsoleSession, command: GuestCommand, options: VerifyOptions) async throws
        -> CommandResult
    {
        let marker = "D2L" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        let line = "echo \(marker)'_BEGIN'; \(command.command); d2l_rc=$?; echo; echo \(marker)'_RC='$d2l_rc\r"
        try session.type(line)
        let expected = answersInput ? marker : "D2L[0-9A-Za-z]+"
        let begin = try ConsolePattern("^\(expected)_BEGIN$")
        let rc = try ConsolePattern("^\(expected)_RC=(\\d+)$")
        let deadline = options.commandDeadline
        let timedOut = { SessionFailure(reason: "no end of the command within \(Int(deadline.seconds)) s") }
        _ = try await waitFor(session, [begin], deadline: deadline, promptOK: false, failure: timedOut)
        var output: [String] = []
        let (_, captures) = try await waitFor(
            session, [rc], deadline: deadline, promptOK: false, collect: &output, failure: timedOut)
        // The `echo` before the RC marker ends the command's last line: its empty line is not output.
        if output.last?.isEmpty == true { output.removeLast() }
        let status = Int(captures.last ?? "")
        var text = output.joined(separator: "\n")
        if text.utf8.count > options.outputLimit {
            text = "(\(text.utf8.count - options.outputLimit) earlier bytes not kept)\n" + String(text.utf8.suffix(options.outputLimit))!
        }
        let passed: Bool
        if let expected = command.expectOutput {
            passed = expected.firstMatch(in: output.joined(separator: "\n")) != nil
        } else {
            passed = status == 0
        }
        return CommandResult(command: command.command, exitStatus: status, output: text, passed: passed)
    }

    private mutating func waitForPowerOff(_ session: ConsoleSession, deadline: Duration) async throws {
        let start = session.now
        while true {
            switch await session.next() {
            case .closed: return
            case .lines(let lines, _):
                for line in lines where isLive(line, at: session.now) {
                    try checkFailure(line, at: session.now, session: session)
                }
            case .tick:
                try checkTime(at: session.now, session: session)
            }
            if session.now - start > deadline {
                throw SessionFailure(reason: "the guest did not power off within \(Int(deadline.seconds)) s")
            }
        }
    }

    private mutating func waitFor(
        _ session: ConsoleSession, _ patterns: [ConsolePattern], deadline: Duration, promptOK: Bool = true,
        afterALine: Set<Int> = [], failure: () -> SessionFailure
    ) async throws -> (Int, [String]) {
        var ignored: [String] = []
        return try await waitFor(
            session, patterns, deadline: deadline, promptOK: promptOK, afterALine: afterALine, collect: &ignored,
            failure: failure)
    }

    /// Waits for the first line matching one of `patterns`; collects the userspace lines before it
    /// (the kernel's are judged, not collected). A prompt-like pattern in `afterALine` matches an
    /// unfinished line only after a whole line came during the wait.
    private mutating func waitFor(
        _ session: ConsoleSession, _ patterns: [ConsolePattern], deadline: Duration, promptOK: Bool,
        afterALine: Set<Int> = [], collect: inout [String], failure: () -> SessionFailure
    ) async throws -> (Int, [String]) {
        let start = session.now
        var sawALine = false
        while true {
            switch await session.next() {
            case .closed:
                throw SessionFailure(reason: "the guest stopped: " + StageMachine.ending(session.lastLines(5)))
            case .lines(let lines, let partial):
                for (position, line) in lines.enumerated() {
                    if line.isKernel, isLive(line, at: session.now) {
                        // The kernel speaking now: judged, and kept out of the command's output.
                        noteKernelClock(line.kernelTime ?? 0, at: session.now)
                        try checkFailure(line, at: session.now, session: session)
                        continue
                    }
                    // Userspace text, or old kernel messages a command prints (dmesg): the command's output.
                    let text = line.printed
                    for (index, pattern) in patterns.enumerated() {
                        if let captures = pattern.firstMatch(in: text) {
                            session.unread(lines.dropFirst(position + 1))
                            return (index, captures)
                        }
                    }
                    collect.append(text)
                    sawALine = true
                }
                if promptOK, !partial.isEmpty {
                    for (index, pattern) in patterns.enumerated()
                    where pattern.matchesPrompt && (sawALine || !afterALine.contains(index)) {
                        if let captures = pattern.firstMatch(in: partial) { return (index, captures) }
                    }
                }
            case .tick:
                try checkTime(at: session.now, session: session)
            }
            if session.now - start > deadline { throw failure() }
        }
    }

    /// Kernel messages stay judged after login: a panic during a command still fails the run.
    private mutating func checkFailure(_ line: ConsoleLine, at time: Duration, session: ConsoleSession) throws {
        let events = machine.consume(line: line, at: time)
        handle(events, session: session)
        if case .failed(_, _, let reason, _) = machine.failure { throw SessionFailure(reason: "\(reason)") }
    }

    private mutating func checkTime(at time: Duration, session: ConsoleSession) throws {
        handle(machine.check(at: time), session: session)
        if case .failed(_, _, let reason, _) = machine.failure { throw SessionFailure(reason: "\(reason)") }
    }

    // MARK: Report

    func report(image: String, accelerator: Accelerator, guest: GuestFacts?, session: ConsoleSession) -> BootReport {
        var stages: [StageResult] = []
        var failedStage: String?
        var reason: String?
        var failedAt: Double?
        var outcome = BootReport.Outcome.passed
        if case .failed(let stage, let at, let why, _) = machine.failure, sessionFailure == nil {
            failedStage = stage
            reason = why.description
            failedAt = at.seconds
            outcome = .failed
        } else if !machine.stagesDone {
            failedStage = machine.currentStageName
            reason = "the run ended before the stage"
            outcome = .failed
        }
        let lastReached = machine.plan.stages.lastIndex { reached[$0.name] != nil }
        for (index, stage) in machine.plan.stages.enumerated() {
            if let hit = reached[stage.name] {
                stages.append(StageResult(name: stage.name, reached: true, seconds: hit.seconds, line: hit.line))
            } else if stage.name == failedStage {
                stages.append(StageResult(name: stage.name, reached: false, seconds: failedAt, failure: reason))
            } else if unseen.contains(stage.name), let lastReached, index < lastReached {
                stages.append(StageResult(name: stage.name, reached: true, unseen: true))
            } else {
                stages.append(StageResult(name: stage.name, reached: false))
            }
        }
        if let sessionFailure {
            failedStage = sessionFailure.stage
            reason = sessionFailure.reason
            outcome = sessionFailure.couldNotTest ? .couldNotTest : .failed
            stages.append(
                StageResult(
                    name: sessionFailure.stage, reached: false, seconds: sessionFailure.seconds,
                    failure: sessionFailure.reason))
        }
        var notes = notes
        if nudges > 0 {
            notes.append("sent \(nudges) newline\(nudges == 1 ? "" : "s") to see getty print its prompt again")
        }
        if outcome == .passed, !wantsLogin {
            notes.append("failure patterns stayed armed for \(Int(machine.plan.settle.seconds)) s after the last stage")
        }
        let stillRunning = outcome != .passed && ending == nil ? "destroyed by d2l at the verdict" : nil
        return BootReport(
            image: image, accelerator: accelerator.rawValue, outcome: outcome, kernelVersion: kernelVersion,
            operatingSystem: guest?.prettyName, initSystem: guest?.initSystem.rawValue, stages: stages,
            failedStage: failedStage, reason: reason, failureLines: outcome == .passed ? [] : failureLines,
            warnings: warnings, commands: commands, ending: ending ?? stillRunning ?? "destroyed by d2l after the verdict",
            notes: notes, seconds: end.seconds, lastLines: outcome == .passed ? [] : session.lastLines(50))
    }
}
