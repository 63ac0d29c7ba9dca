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
    public static func run(
        _ arguments: [String], environment: [String: String] = [:], stdin: Data? = nil
    ) throws -> String {
        guard let executable = which(arguments[0]) else {
            throw ProcessError(command: arguments, status: 127, stderr: "")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = Array(arguments.dropFirst())
        var env = ProcessInfo.processInfo.environment
        env["LC_ALL"] = "C"
        for (key, value) in environment { env[key] = value }
        process.environment = env
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        let input = Pipe()
        process.standardInput = stdin == nil ? FileHandle.nullDevice : input
        try process.run()
        ChildProcesses.shared.add(process.processIdentifier)
        defer { ChildProcesses.shared.remove(process.processIdentifier) }
        if let stdin {
            try input.fileHandleForWriting.write(contentsOf: stdin)
            try input.fileHandleForWriting.close()
        }
        // Read both pipes concurrently so neither fills up and blocks the child.
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
        let stderr = String(decoding: errData, as: UTF8.self)
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            throw ProcessError(command: arguments, status: process.terminationStatus, stderr: stderr)
        }
        return String(decoding: outData, as: UTF8.self)
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
}
