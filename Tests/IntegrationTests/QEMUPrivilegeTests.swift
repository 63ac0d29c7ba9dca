import D2LSupport
@testable import D2LVerify
import Foundation
import Testing

/// QEMU as the embedded driver starts it, looked at from the host while it runs: never root, no
/// capabilities, seccomp on, and the image reached only through a read-only descriptor.
@Suite(.serialized) struct QEMUPrivilegeTests {
    /// The fields of /proc/PID/status named `names`, by name.
    static func status(of pid: Int32, _ names: [String]) -> [String: String] {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, names.contains(String(parts[0])) else { continue }
            fields[String(parts[0])] = parts[1].trimmingCharacters(in: .whitespaces)
        }
        return fields
    }

    /// The QEMU process of the domain named `name` (found by its `-name guest=NAME,` argument), with its command line.
    static func qemuProcess(domain name: String) -> (pid: Int32, arguments: [String])? {
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if arguments.contains(where: { $0.hasPrefix("guest=\(name),") }) { return (pid, arguments) }
        }
        return nil
    }

    @Test(.timeLimit(.minutes(5))) func qemuRunsUnprivilegedAndGetsTheImageOnlyAsADescriptor() async throws {
        // An image only root can reach (mode 0600 in a 0700 directory), as a user's image under /root is.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("d2l-privilege-\(getpid())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let image = directory + "/private.img"
        #expect(FileManager.default.createFile(atPath: image, contents: nil, attributes: [.posixPermissions: 0o600]))
        #expect(truncate(image, 16 << 20) == 0)
        let before = try FileManager.default.attributesOfItem(atPath: image)

        let hypervisor = try LibvirtHypervisor(uri: LibvirtHypervisor.defaultURI())
        let machine = MachineSpec(diskPath: image, memoryMiB: 128, cpus: 1)
        let console = try await hypervisor.powerOn(machine)
        let qemu = Self.qemuProcess(domain: machine.name)
        let fields = qemu.map { Self.status(of: $0.pid, ["Uid", "Gid", "CapEff", "NoNewPrivs", "Seccomp"]) } ?? [:]
        console.destroy()

        let process = try #require(qemu, "no QEMU process for \(machine.name)")
        let uid = try #require(fields["Uid"]?.split(separator: "\t").compactMap { UInt32($0) })
        let expected = try QEMUIdentity.forThisProcess()
        #expect(uid.allSatisfy { $0 == expected.uid }, "QEMU's real, effective, saved and file-system uid: \(uid)")
        if geteuid() == 0 {
            #expect(!uid.contains(0), "QEMU runs as root")
            #expect(uid.first == getpwnam(QEMUIdentity.systemUserName)?.pointee.pw_uid)
        }
        #expect(fields["CapEff"] == "0000000000000000", "QEMU holds capabilities: \(fields["CapEff"] ?? "?")")
        #expect(fields["NoNewPrivs"] == "1")
        #expect(fields["Seccomp"] == "2", "QEMU's seccomp sandbox is off")
        // The image is a descriptor (/dev/fdset/N), never a path QEMU opens.
        let commandLine = process.arguments.joined(separator: " ")
        #expect(commandLine.contains("/dev/fdset/"))
        #expect(!commandLine.contains(image))

        // Nothing was done to the image or beside it, and the boot's scratch directory is gone with the domain.
        let after = try FileManager.default.attributesOfItem(atPath: image)
        for key: FileAttributeKey in [.ownerAccountID, .groupOwnerAccountID, .posixPermissions, .size, .modificationDate] {
            #expect((before[key] as? NSObject) == (after[key] as? NSObject), "\(key.rawValue) of the image changed")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["private.img"])
        #expect(!FileManager.default.fileExists(atPath: "/var/tmp/\(machine.name)"))
        var gone = false
        for _ in 0..<100 where !gone {
            gone = kill(process.pid, 0) != 0
            if !gone { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(gone, "QEMU \(process.pid) still runs after destroy")
    }

    @Test("d2l verify killed outright (SIGKILL) mid-boot: its QEMU is killed and its scratch directory removed", .timeLimit(.minutes(5)))
    func sigkillLeavesNoQEMU() async throws {
        let disk = try await Fixtures.debianDisk()
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("d2l-sigkill-\(getpid()).log").path
        defer { try? FileManager.default.removeItem(atPath: output) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Fixtures.d2lBinary())
        process.arguments = ["verify", disk, "--firmware", "bios", "--timeout", "600"]
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let pid = process.processIdentifier
        // Kill it once QEMU runs, as an OOM killer or a CI job's timeout would.
        var qemu: (pid: Int32, arguments: [String])?
        for _ in 0..<600 where qemu == nil {
            try await Task.sleep(for: .milliseconds(100))
            if (try? String(contentsOfFile: output, encoding: .utf8))?.contains("powered on") == true {
                qemu = ProcessList.qemu(ownedBy: pid)
            }
        }
        let found = try #require(qemu, "no QEMU for d2l \(pid): \((try? String(contentsOfFile: output, encoding: .utf8)) ?? "")")
        let name = try #require(found.arguments.first { $0.hasPrefix("guest=") }.map { String($0.dropFirst(6).prefix { $0 != "," }) })
        #expect(FileManager.default.fileExists(atPath: "/var/tmp/\(name)"))
        kill(pid, SIGKILL)
        process.waitUntilExit()
        var gone = false
        for _ in 0..<100 where !gone {
            gone = kill(found.pid, 0) != 0 && !FileManager.default.fileExists(atPath: "/var/tmp/\(name)")
            if !gone { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(kill(found.pid, 0) != 0, "QEMU \(found.pid) outlived the d2l that started it")
        #expect(!FileManager.default.fileExists(atPath: "/var/tmp/\(name)"), "the boot's scratch directory is left")
    }
}

/// Processes found through /proc.
enum ProcessList {
    /// The QEMU of a domain d2l process `owner` named (`guest=d2l-verify-OWNER-...`).
    static func qemu(ownedBy owner: Int32) -> (pid: Int32, arguments: [String])? {
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if arguments.contains(where: { $0.hasPrefix("guest=d2l-verify-\(owner)-") }) { return (pid, arguments) }
        }
        return nil
    }
}

/// What a d2l killed between defining its domain and making it transient leaves in a shared embedded root.
@Suite struct StaleDomainTests {
    @Test("an embedded root's sweep (run when it is opened) undefines the inactive d2l domains of dead processes, and only those")
    func staleDefinitionsAreSwept() async throws {
        // The default root, as every boot here uses it (one embedded driver per process).
        let connection = try LibvirtConnection.shared(uri: LibvirtHypervisor.defaultURI())
        // A pid that was a process and is gone: a child that has exited and been reaped.
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/true")
        try child.run()
        child.waitUntilExit()
        let dead = child.processIdentifier
        let names = ["d2l-verify-\(dead)-0badcafe", "d2l-verify-bisect-\(dead)-0badcafe", "d2l-verify-\(getpid())-0c0ffee0", "other-\(dead)-vm"]
        for name in names {
            _ = try connection.define(xml: MachineSpec(name: name, diskPath: "/dev/null", memoryMiB: 64, cpus: 1).domainXML)
        }
        connection.undefineStaleDomains()
        #expect(connection.domain(named: names[0]) == nil && connection.domain(named: names[1]) == nil)
        // A live d2l's domain and a domain d2l did not name stay.
        for name in names[2...] {
            let domain = try #require(connection.domain(named: name), "\(name) was undefined")
            #expect(domain.undefine())
        }
    }
}
