import D2LSupport
import Foundation
import Testing

/// `kill -9` of a running `d2l build`, at three moments: nothing is left beside the output.
///
/// The disk has no name while it is written (O_TMPFILE), so the kernel frees it with the process; the
/// scratch folder beside it is removed by the reaper d2l starts, once d2l is gone.
@Suite("SIGKILL during a build", .serialized)
struct BuildKillTests {
    enum Moment: String, CaseIterable, Sendable {
        /// Reading the layer's headers: the scratch folder exists, the disk does not yet.
        case scanning
        /// Writing ext4: the disk, with no name, holds more than 8 MiB.
        case writing
        /// qemu-img converting the raw disk to qcow2, both without names.
        case converting
        /// Writing ext4 into a named disk, as on a file system without O_TMPFILE (D2L_NO_TMPFILE=1):
        /// the reaper removes it.
        case writingNamed
    }

    /// A gzip rootfs of the bootable base and a 256 MiB file of zeros: a small file whose every phase
    /// (decompressing it to scan, writing it, converting it) lasts long enough to be caught.
    static func input(in dir: String) async throws -> String {
        var tar = BuildInputs.tar(BuildInputs.bootable + [.directory("opt/")])
        tar.removeLast(1024)
        let size = 256 << 20
        try BuildInputs.write(tar + BuildInputs.header(.init(name: "opt/zeros", claimedSize: Int64(size))), to: dir + "/head")
        defer { unlink(dir + "/head") }
        let path = dir + "/rootfs.tar.gz"
        try await ProcessRunner.run([
            "sh", "-c", "{ cat \(dir)/head; head -c \(size + 1024) /dev/zero; } | gzip -1 > \(path)",
        ])
        return path
    }

    /// The files `pid` holds open that have no name in `directory` (readlink: "DIR/#INODE (deleted)").
    static func anonymousFiles(of pid: Int32, in directory: String) -> [String] {
        let fds = "/proc/\(pid)/fd"
        return ((try? FileManager.default.contentsOfDirectory(atPath: fds)) ?? []).compactMap { fd in
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: fds + "/" + fd),
                target.hasPrefix(directory + "/#"), target.hasSuffix("(deleted)")
            else { return nil }
            return fds + "/" + fd
        }
    }

    static func allocated(_ path: String) -> Int64 {
        var st = stat()
        return stat(path, &st) == 0 ? Int64(st.st_blocks) * 512 : 0
    }

    /// Whether a child of `pid` runs `command`.
    static func hasChild(of pid: Int32, named command: String) -> Bool {
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where Int32(entry) != nil {
            guard let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { continue }
            let name = stat[stat.index(after: stat.firstIndex(of: "(") ?? stat.startIndex)..<close]
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if name == command, fields.count > 1, Int32(fields[1]) == pid { return true }
        }
        return false
    }

    /// Polls `condition` every millisecond for up to `seconds`, blocking (a task's sleep can oversleep
    /// the moment when the machine is busy with other tests).
    static func wait(seconds: Double, for condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(1000)
        }
        return condition()
    }

    @Test("kill -9 of d2l build leaves nothing beside the output", arguments: Moment.allCases)
    func killLeavesNothing(at moment: Moment) async throws {
        let dir = try BuildInputs.scratch("kill-\(moment.rawValue)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let input = try await Self.input(in: dir)
        let out = dir + "/out"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let name = moment == .converting ? "disk.qcow2" : "disk.img"

        let process = Process()
        process.executableURL = URL(fileURLWithPath: try BuildInputs.d2lBinary())
        process.arguments = ["build", input, "-o", out + "/" + name, "-q"]
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        if moment == .writingNamed {
            process.environment = ProcessInfo.processInfo.environment.merging(["D2L_NO_TMPFILE": "1"]) { $1 }
        }
        try process.run()
        let pid = process.processIdentifier
        let scratch = out + "/.\(name).d2l-\(pid).d"
        func atMoment() -> Bool {
            switch moment {
            case .scanning:
                // Not the end either, where the scratch folder outlives the disk by an instant: by then
                // the output has its name.
                return FileManager.default.fileExists(atPath: scratch) && Self.anonymousFiles(of: pid, in: out).isEmpty
                    && !FileManager.default.fileExists(atPath: out + "/" + name)
            case .writing:
                return Self.anonymousFiles(of: pid, in: out).contains { Self.allocated($0) > 8 << 20 }
            case .converting:
                return Self.hasChild(of: pid, named: "qemu-img")
            case .writingNamed:
                return Self.allocated(out + "/.\(name).d2l-\(pid).tmp") > 8 << 20
            }
        }
        var reached = false
        _ = Self.wait(seconds: 60) {
            reached = atMoment()
            return reached || !process.isRunning  // a build that ends first is a failure, not a minute's wait
        }
        // What is beside the output at the moment of the kill: the scratch folder, never a disk with a name.
        let beside = BuildInputs.listing(out)
        kill(pid, SIGKILL)
        process.waitUntilExit()
        #expect(reached, "the build reached \(moment) before it ended")
        #expect(process.terminationReason == .uncaughtSignal, "d2l was killed, not finished")
        if moment == .writingNamed {
            #expect(beside.contains(".\(name).d2l-\(pid).tmp"), "\(beside)")
        } else {
            #expect(!beside.contains { $0.hasSuffix(".tmp") || $0 == name || $0.hasSuffix(".qcow2") }, "\(beside)")
        }
        // The reaper removes the scratch folder once d2l is gone; qemu-img may still be closing the files.
        let empty = Self.wait(seconds: 10) { BuildInputs.listing(out).isEmpty }
        #expect(empty, "left beside the output: \(BuildInputs.listing(out))")
    }
}
