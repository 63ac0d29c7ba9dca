import Foundation

extension Fixtures {
    /// QEMU processes of d2l domains whose d2l process is gone: left behind. Domains of d2l runs that
    /// other tests on this machine have going at the same time are not counted.
    static func orphanedQEMUProcesses() -> Set<Int32> {
        var pids: Set<Int32> = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry),
                let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline")
            else { continue }
            let cmdline = String(decoding: data, as: UTF8.self)
            // The domain is named d2l-verify[-kind]-<pid of d2l>-<random>.
            guard cmdline.contains("qemu-system"), let range = cmdline.range(of: "guest=d2l-verify-") else { continue }
            let name = cmdline[range.upperBound...].prefix { $0 != "," && $0 != "\0" }
            let owner = name.split(separator: "-").compactMap { Int32($0) }.first
            if let owner, kill(owner, 0) == 0 { continue }
            pids.insert(pid)
        }
        return pids
    }
}
