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
    public var poweroffDeadline: Duration = .seconds(90)

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
    case warning(String)
    case commandFinished(CommandResult)
    case poweredOff(seconds: Double)
    /// Decided; the machine is torn down after this.
    case verdict(BootReport)
}

/// Boots a machine and follows its console until a verdict.
public struct BootVerifier: Sendable {
    public let hypervisor: any Hypervisor
    public let options: VerifyOptions

    public init(hypervisor: any Hypervisor, options: VerifyOptions) {
        self.hypervisor = hypervisor
        self.options = options
    }

    /// Boots `machine` and returns the verdict; throws only when it could not test (hypervisor errors).
    public func verify(
        _ machine: MachineSpec, guest: GuestFacts? = nil, transcript: ((_ bytes: [UInt8]) -> Void)? = nil,
        progress: @escaping @Sendable (VerifyProgress) -> Void = { _ in }
    ) async throws -> BootReport {
        let console = try await hypervisor.powerOn(machine)
        let session = ConsoleSession(console: console, stopwatch: hypervisor.stopwatch)
        progress(.poweredOn)
        var run = Run(machine: StageMachine(plan: options.plan), progress: progress)
        do {
            try await run.boot(session)
            if run.machine.passed, let login = options.login {
                await run.afterLogin(session, login: login, options: options)
            }
        } catch {
            console.destroy()
            transcript?(session.transcript)
            throw error
        }
        let report = run.report(
            image: machine.diskPath, accelerator: machine.accelerator, guest: guest, session: session)
        // The verdict goes out before the teardown: destroying a QEMU process takes a second or two.
        transcript?(session.transcript)
        progress(.verdict(report))
        console.destroy()
        return report
    }
}

/// The mutable state of one verification.
private struct Run {
    var machine: StageMachine
    let progress: @Sendable (VerifyProgress) -> Void
    var reached: [String: (seconds: Double, line: String)] = [:]
    var kernelVersion: String?
    var warnings: [String] = []
    var commands: [CommandResult] = []
    var sessionFailure: (stage: String, seconds: Double, reason: String)?
    var end: Duration = .zero

    init(machine: StageMachine, progress: @escaping @Sendable (VerifyProgress) -> Void) {
        self.machine = machine
        self.progress = progress
    }

    /// Follows the console until every stage is reached or the boot fails.
    mutating func boot(_ session: ConsoleSession) async throws {
        while !machine.finished {
            let event = await session.next()
            let now = session.now
            switch event {
            case .lines(let lines, let partial):
                for (index, line) in lines.enumerated() {
                    handle(machine.consume(line: line, complete: true, at: now))
                    if machine.finished {
                        // What follows the last stage belongs to the login conversation.
                        session.unread(lines.dropFirst(index + 1))
                        break
                    }
                }
                if !machine.finished, !partial.isEmpty {
                    handle(machine.consume(line: partial, complete: false, at: now))
                }
                if let failure = machine.check(at: now) { handle([failure]) }
            case .tick:
                if let failure = machine.check(at: now) { handle([failure]) }
            case .closed(let error):
                if let error, !machine.finished {
                    throw VerifyError.hypervisor("the console failed: \(error)", underlying: error)
                }
                if let failure = machine.guestStopped(at: now) { handle([failure]) }
            }
        }
        end = session.now
    }

    private mutating func handle(_ events: [StageEvent]) {
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
            case .warning(let name, let at, let line):
                let text = "\(name) at \(BootReport.format(at.seconds)): \(line)"
                warnings.append(text)
                progress(.warning(text))
            case .failed:
                break  // kept in machine.failure
            }
        }
    }

    // MARK: After login

    enum SessionError: Error {
        case failed(String)
    }

    /// Logs in, runs the commands, powers off. Failures are recorded, not thrown.
    mutating func afterLogin(_ session: ConsoleSession, login: LoginCredentials, options: VerifyOptions) async {
        var stage = "login as \(login.user)"
        do {
            try await logIn(session, login: login, deadline: options.loginDeadline)
            stage = "run"
            for command in options.commands {
                stage = "run: \(command.command)"
                let result = try await run(session, command: command, deadline: options.commandDeadline)
                commands.append(result)
                progress(.commandFinished(result))
                if !result.passed {
                    let status = result.exitStatus.map(String.init) ?? "unknown"
                    let why = command.expectOutput.map { "output did not match \($0.source)" } ?? "exit status \(status)"
                    throw SessionError.failed("command failed (\(why))")
                }
            }
            stage = "poweroff"
            try session.type("poweroff\r")
            try await waitForPowerOff(session, deadline: options.poweroffDeadline)
            progress(.poweredOff(seconds: session.now.seconds))
        } catch SessionError.failed(let reason) {
            sessionFailure = (stage, session.now.seconds, reason)
        } catch {
            sessionFailure = (stage, session.now.seconds, "\(error)")
        }
        end = session.now
    }

    private mutating func logIn(_ session: ConsoleSession, login: LoginCredentials, deadline: Duration) async throws {
        let shell = ConsolePattern(builtIn: #"[#$]\s*$"#)
        let password = ConsolePattern(builtIn: #"[Pp]assword:\s*$"#)
        let incorrect = ConsolePattern(builtIn: #"Login incorrect|Authentication failure"#)
        try session.type(login.user + "\r")
        var (index, _) = try await waitFor(session, [shell, password, incorrect], deadline: deadline)
        if index == 1 {
            try session.type((login.password ?? "") + "\r")
            (index, _) = try await waitFor(session, [shell, incorrect], deadline: deadline)
            if index == 1 { throw SessionError.failed("the guest refused the password for \(login.user)") }
        } else if index == 2 {
            throw SessionError.failed("the guest refused the login \(login.user)")
        }
    }

    /// Types the command between two markers and reads its output and exit status.
    private mutating func run(_ session: ConsoleSession, command: GuestCommand, deadline: Duration) async throws
        -> CommandResult
    {
        let marker = "D2L" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        // The typed text quotes the markers, so only the shell's output can match them.
        let line = "echo \(marker)'_BEGIN'; \(command.command); d2l_rc=$?; echo; echo \(marker)'_RC='$d2l_rc\r"
        try session.type(line)
        let begin = try ConsolePattern("^\(marker)_BEGIN$")
        let rc = try ConsolePattern("\(marker)_RC=(\\d+)")
        _ = try await waitFor(session, [begin], deadline: deadline, promptOK: false)
        var output: [String] = []
        let (_, captures) = try await waitFor(session, [rc], deadline: deadline, promptOK: false, collect: &output)
        let status = Int(captures.last ?? "")
        let text = output.joined(separator: "\n")
        let passed: Bool
        if let expected = command.expectOutput {
            passed = expected.firstMatch(in: text) != nil
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
                for line in lines { try checkFailure(line, at: session.now) }
            case .tick:
                break
            }
            if session.now - start > deadline {
                throw SessionError.failed("the guest did not power off within \(Int(deadline.seconds)) s")
            }
        }
    }

    private mutating func waitFor(
        _ session: ConsoleSession, _ patterns: [ConsolePattern], deadline: Duration, promptOK: Bool = true
    ) async throws -> (Int, [String]) {
        var ignored: [String] = []
        return try await waitFor(session, patterns, deadline: deadline, promptOK: promptOK, collect: &ignored)
    }

    /// Waits for the first line matching one of `patterns`; collects the lines before it.
    private mutating func waitFor(
        _ session: ConsoleSession, _ patterns: [ConsolePattern], deadline: Duration, promptOK: Bool,
        collect: inout [String]
    ) async throws -> (Int, [String]) {
        let start = session.now
        while true {
            switch await session.next() {
            case .closed:
                throw SessionError.failed("the guest stopped")
            case .lines(let lines, let partial):
                for (position, line) in lines.enumerated() {
                    try checkFailure(line, at: session.now)
                    for (index, pattern) in patterns.enumerated() {
                        if let captures = pattern.firstMatch(in: line) {
                            session.unread(lines.dropFirst(position + 1))
                            return (index, captures)
                        }
                    }
                    collect.append(line)
                }
                if promptOK, !partial.isEmpty {
                    for (index, pattern) in patterns.enumerated() where pattern.matchesPrompt {
                        if let captures = pattern.firstMatch(in: partial) { return (index, captures) }
                    }
                }
            case .tick:
                break
            }
            if session.now - start > deadline {
                throw SessionError.failed("no answer within \(Int(deadline.seconds)) s")
            }
        }
    }

    /// Failure patterns stay armed after login: a panic during a command still fails the run.
    private mutating func checkFailure(_ line: String, at time: Duration) throws {
        for event in machine.consume(line: line, complete: true, at: time) {
            switch event {
            case .failed(_, _, let reason): throw SessionError.failed("\(reason)")
            case .warning: handle([event])
            case .reached: break
            }
        }
    }

    // MARK: Report

    func report(image: String, accelerator: Accelerator, guest: GuestFacts?, session: ConsoleSession) -> BootReport {
        var stages: [StageResult] = []
        var failedStage: String?
        var reason: String?
        var failedAt: Double?
        if case .failed(let stage, let at, let why) = machine.failure {
            failedStage = stage
            reason = why.description
            failedAt = at.seconds
        }
        for stage in machine.plan.stages {
            if let hit = reached[stage.name] {
                stages.append(StageResult(name: stage.name, reached: true, seconds: hit.seconds, line: hit.line))
            } else if stage.name == failedStage {
                stages.append(StageResult(name: stage.name, reached: false, seconds: failedAt, failure: reason))
            } else {
                stages.append(StageResult(name: stage.name, reached: false))
            }
        }
        if let sessionFailure {
            failedStage = sessionFailure.stage
            reason = sessionFailure.reason
            stages.append(
                StageResult(
                    name: sessionFailure.stage, reached: false, seconds: sessionFailure.seconds,
                    failure: sessionFailure.reason))
        }
        let passed = machine.passed && sessionFailure == nil
        return BootReport(
            image: image, accelerator: accelerator.rawValue, passed: passed, kernelVersion: kernelVersion,
            operatingSystem: guest?.prettyName, initSystem: guest?.initSystem.rawValue, stages: stages,
            failedStage: failedStage, reason: reason, warnings: warnings, commands: commands,
            seconds: end.seconds, lastLines: passed ? [] : session.lastLines(50))
    }
}
