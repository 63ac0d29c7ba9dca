import Foundation

/// A failure of an external program, with what it printed on stderr.
public struct ProcessError: Error, CustomStringConvertible, Sendable {
    public let command: [String]
    public let status: Int32
    public let stderr: String

    public var description: String {
        let tail = stderr.split(separator: "\n").suffix(8).joined(separator: "\n")
        if status == 127 {
            return "\(command[0]) is not installed (needed for: \(command.joined(separator: " ")))"
        }
        return "\(command.joined(separator: " ")) failed with status \(status)"
            + (tail.isEmpty ? "" : ":\n\(tail)")
    }
}

/// Runs the external programs d2l relies on (mkfs, mtools, syslinux, qemu-img).
public enum ProcessRunner {
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

    /// Runs a program to completion; throws with its stderr when it fails.
    @discardableResult
    public static func run(_ arguments: [String], environment: [String: String] = [:]) throws -> String {
        var env = ["LC_ALL": "C"]
        for (key, value) in environment { env[key] = value }
        let result = captureSync(arguments, environment: env, workingDirectory: nil)
        guard result.status == 0 else {
            throw ProcessError(command: arguments, status: result.status, stderr: result.stderr)
        }
        return result.stdout
    }
}

/// Child processes still running, so that a signal handler can end them.
public final class ChildProcesses: @unchecked Sendable {
    public static let shared = ChildProcesses()
    private let lock = NSLock()
    private var pids: Set<Int32> = []

    func add(_ pid: Int32) { lock.withLock { _ = pids.insert(pid) } }
    func remove(_ pid: Int32) { lock.withLock { _ = pids.remove(pid) } }
    /// Sends SIGTERM to every child started through ProcessRunner.
    public func terminateAll() {
        for pid in lock.withLock({ pids }) { kill(pid, SIGTERM) }
    }
    /// Sends SIGKILL to every child started through ProcessRunner: for those that ignore SIGTERM
    /// (`unshare --fork` does while it waits).
    public func killAll() {
        for pid in lock.withLock({ pids }) { kill(pid, SIGKILL) }
    }
}

/// The outcome of a program run to completion, whatever its status.
public struct ProcessResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

extension ProcessRunner {
    /// Runs a program without blocking the caller's thread (the wait happens on a
    /// Dispatch thread), capturing its output; never throws for a non-zero status.
    public static func capture(
        _ arguments: [String], environment: [String: String] = [:], workingDirectory: String? = nil
    ) async -> ProcessResult {
        await BackgroundJob.run { captureSync(arguments, environment: environment, workingDirectory: workingDirectory) }
    }

    /// Runs a program to completion on this thread, capturing its output; never throws for a non-zero status.
    public static func captureSync(
        _ arguments: [String], environment: [String: String] = [:], workingDirectory: String? = nil
    )
        -> ProcessResult
    {
        guard let executable = which(arguments[0]) else {
            return ProcessResult(status: 127, stdout: "", stderr: "\(arguments[0]): not found")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = Array(arguments.dropFirst())
        var env = ProcessInfo.processInfo.environment
        for (key, value) in environment { env[key] = value }
        process.environment = env
        if let workingDirectory { process.currentDirectoryURL = URL(fileURLWithPath: workingDirectory) }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        do { try process.run() } catch {
            return ProcessResult(status: 127, stdout: "", stderr: "\(arguments[0]): \(error)")
        }
        ChildProcesses.shared.add(process.processIdentifier)
        defer { ChildProcesses.shared.remove(process.processIdentifier) }
        nonisolated(unsafe) var errData = Data()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            errData = err.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        process.waitUntilExit()
        let status = process.terminationReason == .exit ? process.terminationStatus : 128 + process.terminationStatus
        return ProcessResult(
            status: status, stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self))
    }
}
