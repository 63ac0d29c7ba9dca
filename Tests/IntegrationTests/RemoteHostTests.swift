import Foundation
import Synchronization
import Testing

/// Two libvirt daemons "on other hosts": each in its own network and mount namespace on this machine,
/// reached over qemu+tls with certificates from a CA this test makes (Tests/Hosts/libvirt-host).
final class RemoteHosts: @unchecked Sendable {
    let directory: String
    let names: [String]
    let subnets: [String]
    private(set) var uris: [String] = []
    static let script = Fixtures.repositoryRoot + "/Tests/Hosts/libvirt-host"

    private static let made = Mutex(0)

    private init(count: Int) async throws {
        let pid = Int(getpid())
        let serial = Self.made.withLock { $0 += 1; return $0 }
        directory = "/var/tmp/d2l-hosts-\(pid)-\(serial)"
        names = (0..<count).map { "d2lh\(pid % 10_000)s\(serial)\(["a", "b", "c"][$0])" }
        subnets = (0..<count).map { "10.\(100 + pid % 100).\(serial * 4 + $0)" }
        let ca = try await Fixtures.run([Self.script, "ca", directory])
        try #require(ca.status == 0, "libvirt-host ca: \(ca.stderr)")
        for (name, subnet) in zip(names, subnets) {
            let up = try await Fixtures.run([Self.script, "up", directory, name, subnet])
            guard up.status == 0 else {
                await down()
                throw FixtureError("libvirt-host up \(name): \(up.stderr)")
            }
            uris.append(up.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    /// Runs `body` with `count` hosts up, and takes them down after, however it ends.
    static func with<T>(_ count: Int, _ body: (RemoteHosts) async throws -> T) async throws -> T {
        let hosts = try await RemoteHosts(count: count)
        do {
            let value = try await body(hosts)
            await hosts.down()
            return value
        } catch {
            await hosts.down()
            throw error
        }
    }

    /// The files in host `index`'s storage pool.
    func images(_ index: Int) -> [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: "\(directory)/\(names[index])/images")) ?? []
    }

    /// The QEMU processes host `index`'s daemon runs (their pid files).
    func runningGuests(_ index: Int) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "\(directory)/\(names[index])/run/qemu")) ?? [])
            .filter { $0.hasSuffix(".pid") && $0 != "driver.pid" }
    }

    func killDaemon(_ index: Int) async {
        _ = try? await Fixtures.run([Self.script, "kill", directory, names[index]])
    }

    func down() async {
        for name in names { _ = try? await Fixtures.run([Self.script, "down", directory, name]) }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

@Suite(.serialized) struct RemoteHostTests {
    /// The busybox-tiny scenario: its init says when it ran (BusyBox init logs nothing).
    static let tiny = Fixtures.repositoryRoot + "/Scenarios/busybox-tiny.yaml"

    @Test(
        "d2l verify --connect qemu+tls://HOST: the disk uploaded once into the host's pool for both boots, removed after",
        .timeLimit(.minutes(10)))
    func verifyOnAnotherHost() async throws {
        try await RemoteHosts.with(1) { hosts in
        let disk = try await Fixtures.Shared.shared.tinyDisk()
        let verify = try await Fixtures.d2l(["verify", disk, "--connect", hosts.uris[0], "--timeout", "600", "--scenario", Self.tiny])
        #expect(verify.status == 0, "\(verify.stdout)\n\(verify.stderr)")
        // A hybrid disk: two boots (BIOS and UEFI), one upload.
        #expect(verify.stderr.components(separatedBy: "d2l: uploading ").count == 2, "\(verify.stderr)")
        let said = verify.stdout + verify.stderr
        #expect(said.contains("booted under bios") && said.contains("booted under uefi"), "\(said)")
        #expect(hosts.images(0).isEmpty, "left in the pool: \(hosts.images(0))")
        #expect(hosts.runningGuests(0).isEmpty)
        }
    }

    @Test(
        "on the remote host: SIGTERM removes the domain and the volume; a dropped connection (SIGKILL) the domain, the volume is reused",
        .timeLimit(.minutes(10)))
    func remoteSideOnEveryWayOut() async throws {
        try await RemoteHosts.with(1) { hosts in
        let disk = try await Fixtures.Shared.shared.tinyDisk()
        for signal in [SIGTERM, SIGKILL] {
            let log = FileManager.default.temporaryDirectory.appendingPathComponent("d2l-remote-\(getpid())-\(signal).log").path
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            defer { try? FileManager.default.removeItem(atPath: log) }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: try Fixtures.d2lBinary())
            process.arguments = ["verify", disk, "--connect", hosts.uris[0], "--firmware", "bios", "--timeout", "600"]
            process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            var running = false
            for _ in 0..<600 where !running {
                try await Task.sleep(for: .milliseconds(100))
                running = (try? String(contentsOfFile: log, encoding: .utf8))?.contains("powered on") == true
            }
            try #require(running, "no boot: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
            #expect(hosts.runningGuests(0).count == 1)
            kill(process.processIdentifier, signal)
            process.waitUntilExit()
            if signal == SIGTERM {
                // The domain its cleanup destroyed is no verdict: 128+15, not "did not boot".
                #expect(process.terminationStatus == 143, "\((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
            }
            var gone = false
            for _ in 0..<150 where !gone {
                gone = hosts.runningGuests(0).isEmpty
                if !gone { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(gone, "the remote domain outlived d2l (signal \(signal))")
            if signal == SIGTERM {
                #expect(hosts.images(0).isEmpty, "SIGTERM left \(hosts.images(0))")
            } else {
                // The connection dropped with d2l: the daemon destroyed the autodestroy domain; the volume stays.
                #expect(hosts.images(0).contains { $0.hasPrefix("d2l-") && !$0.contains(".part-") }, "\(hosts.images(0))")
            }
        }
        // The volume left by the killed run is found by its content's name, not uploaded again (and left there).
        let again = try await Fixtures.d2l([
            "verify", disk, "--connect", hosts.uris[0], "--firmware", "bios", "--timeout", "600", "--scenario", Self.tiny,
        ])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(again.stderr.contains("is already in pool default") && !again.stderr.contains("d2l: uploading"), "\(again.stderr)")
        }
    }

    @Test(
        "d2l test --connect A --connect B: boots spread over both; A's daemon killed mid-run, its boot moves to B as an infrastructure error",
        .timeLimit(.minutes(15)))
    func aMatrixOverTwoHostsSurvivesOneDying() async throws {
        try await RemoteHosts.with(2) { hosts in
        let dir = try Fixtures.scratchDirectory("matrix-hosts")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Copies of the busybox-tiny scenario: each its own scenario, the same recipe and disk.
        let original = try String(contentsOfFile: Fixtures.repositoryRoot + "/Scenarios/busybox-tiny.yaml", encoding: .utf8)
        let names = ["tiny-1", "tiny-2", "tiny-3"]
        // A 2 s settle, as Fixtures gives the other boots.
        let copy = original.replacingOccurrences(of: "verify:\n", with: "verify:\n  settle: 2\n")
        for name in names { try copy.write(toFile: "\(dir)/\(name).yaml", atomically: true, encoding: .utf8) }
        let log = dir + "/test.log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Fixtures.d2lBinary())
        process.arguments = [
            "test", dir, "--images", Fixtures.repositoryRoot + "/Images", "--output", dir + "/out",
            "--connect", hosts.uris[0] + ",slots=1", "--connect", hosts.uris[1] + ",slots=1",
        ]
        let table = dir + "/table.txt"
        _ = FileManager.default.createFile(atPath: table, contents: nil)
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: table))
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGTERM); process.waitUntilExit() } }
        func said() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        // Kill A's daemon while a guest of the matrix runs on it.
        var killed = false
        for _ in 0..<3000 where !killed && process.isRunning {
            try await Task.sleep(for: .milliseconds(100))
            if said().contains(" on \(hosts.uris[0])"), !hosts.runningGuests(0).isEmpty {
                await hosts.killDaemon(0)
                killed = true
            }
        }
        try #require(killed, "no boot on \(hosts.uris[0]): \(said())")
        process.waitUntilExit()
        let output = said()
        let summary = (try? String(contentsOfFile: table, encoding: .utf8)) ?? ""
        #expect(process.terminationStatus == 0, "\(output)")
        #expect(summary.contains("3 passed, 0 failed") && summary.contains("1 infrastructure error(s)"), "\(summary)")
        #expect(output.contains("host \(hosts.uris[0]) failed: "), "\(output)")
        struct Results: Decodable {
            struct Result: Decodable { var verdict: String; var host: String?; var infrastructureErrors: [String] }
            var results: [Result]
        }
        let results = try JSONDecoder().decode(Results.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/out/results.json")))
        #expect(results.results.allSatisfy { $0.verdict == "passed" && $0.host == hosts.uris[1] })
        #expect(results.results.flatMap(\.infrastructureErrors).map { $0.hasPrefix(hosts.uris[0]) } == [true])
        // Every boot after the kill ran on B, and B's pool is empty after the run.
        #expect(output.contains(" on \(hosts.uris[1])"), "\(output)")
        #expect(hosts.images(1).isEmpty, "left in B's pool: \(hosts.images(1))")
        #expect(hosts.runningGuests(1).isEmpty)
        }
    }
}
