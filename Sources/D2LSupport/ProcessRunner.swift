import Foundation
import Subprocess
import Synchronization

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// A failure of an external program, with what it printed on stderr.
public struct ProcessError: Error, CustomStringConvertible, Sendable, CategorizedError {
    public let command: [String]
    public let status: Int32
    public let stderr: String

    public init(command: [String], status: Int32, stderr: String) {
        self.command = command
        self.status = status
        self.stderr = stderr
    }

    public var description: String {
        let tail = stderr.split(separator: "\n").suffix(8).joined(separator: "\n")
        if status == 127 {
            return "\(command[0]) is not installed (needed for: \(command.joined(separator: " ")))"
        }
        return "\(command.joined(separator: " ")) failed with status \(status)"
            + (tail.isEmpty ? "" : ":\n\(tail)")
    }

    public var category: ErrorCategory { .couldNotTest }
}

/// The outcome of a program run to completion, whatever its status.
public struct ProcessResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String

    public init(status: Int32, stdout: String, stderr: String) {
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
    }
}

/// Runs the external programs d2l relies on (mkfs, mtools, syslinux, qemu-img, podman), through
/// swift-subprocess.
///
/// Cancelling the task that awaits a program ends that program, and only it: SIGTERM, then SIGKILL
/// after `Stop.terminateThenKill`'s grace period (or SIGKILL at once with `.kill`, for programs such as
/// `unshare --fork` that ignore SIGTERM while they wait). Every running child is also known to
/// `ChildProcesses`, so that a signal that ends d2l ends them before it removes their files.
public enum ProcessRunner {
    /// How a program is stopped when the task awaiting it is cancelled.
    public enum Stop: Sendable {
        /// SIGTERM, then SIGKILL 2 s later if it is still running.
        case terminateThenKill
        /// SIGKILL at once.
        case kill

        var steps: [TeardownStep] {
            switch self {
            case .terminateThenKill: return [.gracefulShutDown(allowedDurationToNextStep: .seconds(2))]
            case .kill: return []  // the sequence always ends with SIGKILL
            }
        }
    }

    /// Finds `name` on PATH (and the sbin folders an ordinary user lacks).
    public static func which(_ name: String) -> String? {
        if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let dirs = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin", "/usr/local/sbin"]
        for dir in dirs {
            let candidate = dir + "/" + name
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Runs a program to completion with `LC_ALL=C` (so that its messages can be read) and returns its stdout.
    ///
    /// - Throws: `ProcessError` with its stderr when it exits non-zero, is not installed (status 127) or
    ///   cannot be started; `CancellationError` when the task was cancelled (the program was stopped).
    @discardableResult
    public static func run(
        _ arguments: [String], environment: [String: String] = [:], workingDirectory: String? = nil,
        stop: Stop = .terminateThenKill, children: ChildProcesses? = nil
    ) async throws -> String {
        var env = ["LC_ALL": "C"]
        for (key, value) in environment { env[key] = value }
        let result = await capture(
            arguments, environment: env, workingDirectory: workingDirectory, stop: stop, children: children)
        try Task.checkCancellation()
        guard result.status == 0 else {
            throw ProcessError(command: arguments, status: result.status, stderr: result.stderr)
        }
        return result.stdout
    }

    /// Runs a program to completion, capturing its output; never throws for a non-zero status
    /// (status 127 when it is not installed or could not start, 128+N when signal N ended it).
    /// `children`, when given, also knows the program while it runs, so that its owner can end it.
    public static func capture(
        _ arguments: [String], environment: [String: String] = [:], workingDirectory: String? = nil,
        stop: Stop = .terminateThenKill, children: ChildProcesses? = nil
    ) async -> ProcessResult {
        guard let executable = which(arguments[0]) else {
            return ProcessResult(status: 127, stdout: "", stderr: "\(arguments[0]): not found")
        }
        var updates: [Environment.Key: String?] = [:]
        for (key, value) in environment {
            if let k = Environment.Key(rawValue: key) { updates[k] = value }
        }
        var options = PlatformOptions()
        options.teardownSequence = stop.steps
        let registered = Mutex<pid_t?>(nil)
        defer {
            if let pid = registered.withLock({ $0 }) {
                ChildProcesses.shared.remove(pid)
                children?.remove(pid)
            }
        }
        do {
            let result = try await Subprocess.run(
                .path(FilePath(executable)), arguments: Arguments(Array(arguments.dropFirst())),
                environment: .inherit.updating(updates),
                workingDirectory: workingDirectory.map { FilePath($0) }, platformOptions: options,
                input: .none, output: .bytes(limit: 1 << 30), error: .bytes(limit: 1 << 28)
            ) { execution in
                let pid = execution.processIdentifier.value
                ChildProcesses.shared.add(pid)
                children?.add(pid)
                registered.withLock { $0 = pid }
            }
            let status: Int32
            switch result.terminationStatus {
            case .exited(let code): status = Int32(code)
            case .signaled(let signal): status = 128 + Int32(signal)
            }
            return ProcessResult(
                status: status, stdout: String(decoding: result.standardOutput, as: UTF8.self),
                stderr: String(decoding: result.standardError, as: UTF8.self))
        } catch {
            return ProcessResult(status: 127, stdout: "", stderr: "\(arguments[0]): \(error)")
        }
    }
}

/// A set of running child processes: `shared` holds all of d2l's, so that a signal handler can end
/// them before d2l exits; an owner (an initrd build) keeps its own to end only those.
public final class ChildProcesses: Sendable {
    public static let shared = ChildProcesses()
    private let pids = Mutex<Set<Int32>>([])

    public init() {}

    public func add(_ pid: Int32) { pids.withLock { _ = $0.insert(pid) } }
    public func remove(_ pid: Int32) { pids.withLock { _ = $0.remove(pid) } }

    /// Sends SIGKILL to every child of this set still running (a child that ignores SIGTERM, such as
    /// `unshare --fork` while it waits, must not outlive its owner).
    public func killAll() {
        for pid in pids.withLock({ $0 }) { kill(pid, SIGKILL) }
    }

    /// Sends SIGTERM to every child of this set, waits up to `grace` for them to end, then SIGKILLs
    /// the rest. A child that cleans up on SIGTERM gets to: a `d2l verify` that `d2l test` started
    /// destroys its libvirt domain, which SIGKILL would leave running with nobody to end it.
    public func stopAll(grace: Duration = .seconds(10)) {
        var running = pids.withLock { $0 }.filter(Self.isRunning)
        for pid in running { kill(pid, SIGTERM) }
        let clock = ContinuousClock()
        let deadline = clock.now + grace
        while !running.isEmpty, clock.now < deadline {
            usleep(50_000)
            running = running.filter(Self.isRunning)
        }
        for pid in running { kill(pid, SIGKILL) }
    }

    /// Alive and not a zombie (an ended child its waiter has not reaped yet): /proc/PID/stat's state.
    static func isRunning(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        let state = stat[stat.index(after: close)...].drop { $0 == " " }.first
        return state != "Z" && state != "X"
    }
}
