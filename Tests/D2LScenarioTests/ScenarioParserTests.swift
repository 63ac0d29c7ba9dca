import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing

@testable import D2LScenario
import D2LVerify

@Suite("Scenario files")
struct ScenarioParserTests {
    let images: String = {
        let dir = NSTemporaryDirectory() + "d2l-scenario-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir + "/Images/demo", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: dir + "/Images/demo/Dockerfile", contents: Data("FROM debian:bookworm\n".utf8))
        return dir + "/Images"
    }()

    func parse(_ yaml: String) throws -> Scenario {
        try ScenarioParser.parse(yaml, file: "/s/demo.yaml", imagesDirectory: images)
    }

    func error(_ yaml: String) -> String {
        do {
            _ = try parse(yaml)
            return ""
        } catch {
            return "\(error)"
        }
    }

    @Test func fullScenarioBecomesBuildAndVerifyArguments() throws {
        let s = try parse(
            """
            description: demo
            recipe: demo
            tags: [a, b]
            build:
              format: qcow2
              headroom: 16M
              append: quiet
            verify:
              timeout: 300
              stages:
                init:
                  pattern: "ready"
                  deadline: 90
              run:
                - command: uname -r
                  expect: "^6\\\\."
                - true
            """)
        #expect(s.name == "demo")
        #expect(s.source == .recipe("demo"))
        #expect(s.tags == ["a", "b"])
        #expect(s.buildArguments == ["--format", "qcow2", "--headroom", "16M", "--append", "quiet", "--root-password-empty"])
        var request = VerifyRequest(image: "disk.img")
        request.commands = [RunCheck(command: "given")]
        s.verify.apply(to: &request)
        #expect(request.timeout == 300)
        #expect(request.expectations == ["init=ready"])
        #expect(request.deadlines == ["init=90"])
        #expect(request.login == "root")
        #expect(request.commands == [
            RunCheck(command: "uname -r", expectOutput: "^6\\."), RunCheck(command: "true"), RunCheck(command: "given"),
        ])
    }

    @Test func afterBootKeysBecomeBuildAndVerifyArguments() throws {
        let dir = NSTemporaryDirectory() + "d2l-scenario-keys-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir + "/keys", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = FileManager.default.createFile(atPath: dir + "/keys/test.pub", contents: Data("ssh-ed25519 AAAA t\n".utf8))
        let s = try ScenarioParser.parse(
            """
            recipe: demo
            build:
              network: none
              user: alice:pw
              ssh-authorized-key: keys/test.pub
              container-service: false
              enlarge: 1G
            verify:
              network: user
            """, file: dir + "/after.yaml", imagesDirectory: images)
        #expect(s.build.enlarge == "1G")
        #expect(s.buildArguments == [
            "--root-password-empty", "--network", "none", "--ssh-authorized-key", dir + "/keys/test.pub", "--user", "alice:pw",
            "--no-container-service",
        ])
        var request = VerifyRequest(image: "disk.img")
        s.verify.apply(to: &request)
        #expect(request.machine.network == .user)
        #expect(error("recipe: demo\nverify:\n  network: bridge\n").contains("verify.network: bridge is not one of none, user"))
        #expect(error("recipe: demo\nbuild:\n  network: static\n").contains("build.network: static is not one of dhcp, none"))
        #expect(error("recipe: demo\nbuild:\n  enlarge: lots\n").contains("build.enlarge: lots: give a size"))
        #expect(error("recipe: demo\nbuild:\n  ssh-authorized-key: /nonexistent.pub\n").contains("/nonexistent.pub cannot be read"))
    }

    @Test func unknownKeyIsNamedWithASuggestion() {
        let e = error("recipe: demo\nverfy:\n  timeout: 3\n")
        #expect(e.contains("unknown key verfy"))
        #expect(e.contains("did you mean verify?"))
        #expect(error("recipe: demo\nbuild:\n  sise: 2G\n").contains("unknown key build.sise"))
    }

    @Test func badRegularExpressionGivesItsPosition() {
        let e = error("recipe: demo\nverify:\n  stages:\n    login:\n      pattern: \"a)b\"\n")
        #expect(e.contains("verify.stages.login.pattern: bad regular expression at position 2"))
    }

    @Test func missingRecipeAndSourceRules() {
        #expect(error("recipe: nosuch\n").contains("nosuch/Dockerfile does not exist"))
        #expect(error("tags: [x]\n").contains("give exactly one of recipe, archive or disk"))
        #expect(error("recipe: demo\ndisk: x.img\n").contains("found: recipe, disk"))
        #expect(error("recipe: demo\nbuild:\n  format: iso\n").contains("not one of"))
        #expect(error("recipe: demo\nverify:\n  timeout: -1\n").contains("positive whole number"))
        #expect(error("- a\n- b\n").contains("expected a mapping"))
    }

    @Test func relativeDiskPathsAreFromTheScenarioFile() throws {
        let s = try parse("disk: ../out/x.img\n")
        #expect(s.source == .disk("/s/../out/x.img"))
        #expect(s.source.isGivenDisk)
    }
}

@Suite("Matrix reports")
struct MatrixReportTests {
    func sample() -> MatrixReport {
        var passed = ScenarioResult(name: "debian", file: "d.yaml", tags: [], verdict: .passed)
        passed.buildSeconds = 4.2
        passed.kernelVersion = "6.1.0-9-amd64"
        passed.stages = [
            .init(name: "bootloader", reached: true, seconds: 0.3),
            .init(name: "kernel", reached: true, seconds: 5),
            .init(name: "init", reached: true, seconds: 13),
            .init(name: "login", reached: true, seconds: 20),
        ]
        var failed = ScenarioResult(name: "panic<&>", file: "p.yaml", tags: [], verdict: .failed)
        failed.stages = [
            .init(name: "bootloader", reached: true, seconds: 0.3),
            .init(name: "kernel", reached: true, seconds: 5),
            .init(name: "init", reached: false, seconds: nil, failure: "Kernel panic - not syncing"),
        ]
        failed.reason = "stage init: Kernel panic"
        failed.lastLines = ["\u{1b}[0mKernel panic - not syncing"]
        let skipped = ScenarioResult(name: "alpine", file: "a.yaml", tags: [], verdict: .skipped, reason: "skipped: base image alpine:3.20 not available")
        return MatrixReport(results: [passed, failed, skipped], seconds: 42)
    }

    @Test func tableHasStageTimesAndCounts() {
        let table = sample().table()
        #expect(table.contains("20.0s"))
        #expect(table.contains("6.1.0-9-amd64"))
        #expect(table.contains("1 passed, 1 failed, 1 skipped"))
    }

    @Test func junitIsWellFormedWithOneCasePerStage() throws {
        let xml = sample().junit()
        let doc = try XMLDocument(xmlString: xml)
        let cases = try doc.nodes(forXPath: "//testcase").count
        let failures = try doc.nodes(forXPath: "//failure").count
        let skips = try doc.nodes(forXPath: "//skipped").count
        #expect(cases == 1 + 4 + 3 + 1)
        #expect(failures == 1)
        #expect(skips == 1)
        #expect(!xml.contains("\u{1b}"))
    }

    @Test func htmlDrawsATimelinePerScenario() {
        let html = sample().html(relativeTo: "/r")
        #expect(html.contains("<svg"))
        #expect(html.contains("#93c47d"))  // the login segment
        #expect(html.contains("panic&lt;&amp;&gt;"))
        #expect(html.contains("#cc0000"))  // the failure marker
    }
}

@Suite("CI shards and merged results")
struct ShardTests {
    static func scenarios(_ names: [String]) throws -> [Scenario] {
        try names.map { try ScenarioParser.parse("recipe: \($0)\n", file: "/s/\($0).yaml", imagesDirectory: nil) }
    }

    @Test func everyScenarioLandsInExactlyOneShard() throws {
        let all = try Self.scenarios((1...11).map { "s\($0)" })
        for count in 1...5 {
            var seen: [String] = []
            for index in 1...count {
                seen += try Shard(parsing: "\(index)/\(count)").select(all).map(\.name)
            }
            #expect(seen.sorted() == all.map(\.name).sorted(), "\(count) shards")
        }
        // The same split wherever it runs, whatever order the files came in.
        #expect(try Shard(parsing: "2/3").select(all).map(\.name) == Shard(parsing: "2/3").select(all.reversed()).map(\.name).reversed())
    }

    @Test func durationsBalanceTheShards() throws {
        let all = try Self.scenarios(["long", "a", "b", "c", "d"])
        let durations = ["long.yaml": 400.0, "a.yaml": 100, "b.yaml": 100, "c.yaml": 100, "d.yaml": 100]
        let one = try Shard(parsing: "1/2").select(all, durations: durations).map(\.name)
        let two = try Shard(parsing: "2/2").select(all, durations: durations).map(\.name)
        #expect(one == ["long"])  // 400 s against 4 x 100 s
        #expect(two.sorted() == ["a", "b", "c", "d"])
    }

    @Test func badShardsAreUsageErrors() {
        for text in ["0/3", "4/3", "1/0", "a/b", "2", "1/2/3"] {
            #expect(throws: ScenarioError.self, "\(text)") { try Shard(parsing: text) }
        }
    }

    @Test func shardsMergeIntoOneReport() throws {
        let base = NSTemporaryDirectory() + "d2l-merge-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: base) }
        for (shard, name, verdict) in [("one", "debian", ScenarioResult.Verdict.passed), ("two", "alpine", .failed)] {
            try FileManager.default.createDirectory(atPath: base + "/" + shard, withIntermediateDirectories: true)
            var result = ScenarioResult(name: name, file: "/s/\(name).yaml", tags: [], verdict: verdict)
            result.seconds = shard == "one" ? 50 : 70
            try MatrixReport(results: [result], seconds: result.seconds ?? 0).json()
                .write(toFile: base + "/" + shard + "/results.json", atomically: true, encoding: .utf8)
        }
        let merged = try MatrixReport.merge(directories: [base + "/one", base + "/two"])
        #expect(merged.results.map(\.name) == ["debian", "alpine"])
        #expect(merged.seconds == 70)
        #expect(merged.counts.failed == 1 && merged.counts.passed == 1)
        #expect(merged.table().contains("alpine") && merged.html(relativeTo: base).contains("debian"))
        let durations = try Shard.durations(fromResults: base + "/two/results.json")
        #expect(durations == ["alpine.yaml": 70])
        #expect(throws: ScenarioError.self) { try MatrixReport.merge(directories: [base + "/missing"]) }
    }
}

@Suite("Boots on other hosts (d2l test --connect)")
struct MatrixHostTests {
    @Test func aHostIsAURIWithSlots() throws {
        #expect(try MatrixRunner.Host(parsing: "qemu+tls://a/system") == .init(uri: "qemu+tls://a/system", slots: 1))
        #expect(try MatrixRunner.Host(parsing: "qemu+ssh://u@b/system?keyfile=/k,slots=3")
            == .init(uri: "qemu+ssh://u@b/system?keyfile=/k", slots: 3))
        for bad in ["", ",slots=2", "qemu+tls://a/system,slots=0", "qemu+tls://a/system,slots=many"] {
            #expect(throws: ScenarioError.self, "\(bad)") { try MatrixRunner.Host(parsing: bad) }
        }
    }

    @Test func theHostsSlotsAreTheBootsAtOnce() {
        var options = MatrixRunner.Options(
            jobs: 7, retries: 0, outputDirectory: "/tmp", repositoryRoot: "/tmp", engine: nil, keepDisks: false, d2lBinary: "d2l")
        #expect(MatrixRunner(options: options, log: { _ in }).parallelBoots == 7)
        options.hosts = [.init(uri: "qemu+tls://a/system", slots: 2), .init(uri: "qemu+tls://b/system", slots: 1)]
        #expect(MatrixRunner(options: options, log: { _ in }).parallelBoots == 3)
    }

    @Test func onlyTheHostsFaultsAreInfrastructureErrors() {
        let lost = "d2l verify: could not test: the connection to the libvirt daemon was lost: end of file"
        #expect(MatrixRunner.hostProblem(lost) == "the connection to the libvirt daemon was lost: end of file")
        let daemon = "d2l: booting\nd2l verify: could not test: libvirt: Cannot recv data: Connection reset by peer"
        #expect(MatrixRunner.hostProblem(daemon) == "libvirt: Cannot recv data: Connection reset by peer")
        #expect(MatrixRunner.hostProblem("d2l verify: could not test: storage pool default: not found") != nil)
        // The disk's or the scenario's own problems stay the boot's.
        #expect(MatrixRunner.hostProblem("d2l verify: could not test: disk.img: no partition table") == nil)
        #expect(MatrixRunner.hostProblem("d2l verify: FAILED at stage kernel") == nil)
    }

    @Test func infrastructureErrorsAreReportedApartFromVerdicts() throws {
        var moved = ScenarioResult(name: "debian", file: "d.yaml", tags: [], verdict: .passed)
        moved.host = "qemu+tls://b/system"
        moved.infrastructureErrors = ["qemu+tls://a/system: the connection to the libvirt daemon was lost"]
        let report = MatrixReport(results: [moved], seconds: 3)
        let table = report.table()
        #expect(table.contains("1 passed, 0 failed"))
        #expect(table.contains("1 infrastructure error(s)") && table.contains("qemu+tls://a/system"))
        let doc = try XMLDocument(xmlString: report.junit())
        #expect(try doc.nodes(forXPath: "//failure").isEmpty && doc.nodes(forXPath: "//error").isEmpty)
        #expect(try doc.nodes(forXPath: "//testcase[@name='host']/system-out").count == 1)
        #expect(report.html(relativeTo: "/r").contains("infrastructure error"))
        let json = try report.json()
        let decoded = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let scenario = (decoded?["results"] as? [[String: Any]])?.first
        #expect(scenario?["host"] as? String == "qemu+tls://b/system", "\(json)")
        #expect((scenario?["infrastructureErrors"] as? [String])?.count == 1, "\(json)")
    }
}
