import ArgumentParser
import D2LBisect
import D2LDiskModel
import D2LScenario
import Foundation
import Testing
import D2LVerify
@testable import D2LCommands

/// The commands parse and validate in-process: typed values, the exit-code policy and --scenario
/// merging, with no VM and no disk.
@Suite struct CommandTests {
    /// A file removed when the test ends.
    static func file(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "d2l-cmd-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).yaml"
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func usageErrorsFollowEachCommandsPolicy() async {
        #expect(await D2LMain.run(["bisect", "--no-such-option"]) == 125)
        #expect(await D2LMain.run(["verify", "--no-such-option", "disk.img"]) == 125)
        #expect(await D2LMain.run(["verify", "disk.img", "--accel", "warp"]) == 125)
        #expect(await D2LMain.run(["verify", "disk.img", "--run", "true"]) == 125)  // --run needs --login
        #expect(await D2LMain.run(["build", "--no-such-option", "x"]) == 64)
        #expect(await D2LMain.run(["build", "x", "--platform", "nonsense"]) == 64)
        #expect(await D2LMain.run(["build", "x", "--format", "vhdx2"]) == 64)
        #expect(await D2LMain.run(["build", "x", "-o", "disk.foo"]) == 64)
        #expect(await D2LMain.run(["build", "x", "-o", "disk.vhdx.gz"]) == 64)
        #expect(await D2LMain.run(["build", "/nonexistent/x", "-o", "/nonexistent/disk.foo", "--format", "raw"]) == 1)
        #expect(await D2LMain.run(["test", "--engine", "lxc"]) == 64)
        #expect(await D2LMain.run(["inspect"]) == 64)
        #expect(await D2LMain.run(["build", "x", "--network", "static"]) == 64)
        #expect(await D2LMain.run(["build", "x", "--user", "Root Admin"]) == 64)
        #expect(await D2LMain.run(["build", "x", "--ssh-authorized-key", "/nonexistent/key.pub"]) == 64)
        #expect(await D2LMain.run(["verify", "disk.img", "--network", "bridge"]) == 125)
        #expect(await D2LMain.run(["--version"]) == 0)
    }

    @Test func helpIsPrintedForEveryWayOfAskingForIt() async {
        // `d2l build --help` and `d2l help build` reach run() as a help request; both are help, status 0.
        for arguments in [["--help"], ["build", "--help"], ["help", "build"], ["verify", "-h"], ["help"]] {
            #expect(await D2LMain.run(arguments) == 0, "d2l \(arguments.joined(separator: " "))")
        }
    }

    @Test func runtimeErrorsFollowEachCommandsPolicy() async throws {
        // A missing disk is "could not test" for verify (git bisect run skips), an error (1) for inspect.
        #expect(await D2LMain.run(["verify", "/nonexistent/d2l.img"]) == 125)
        #expect(await D2LMain.run(["inspect", "/nonexistent/image.tar"]) == 1)
        #expect(await D2LMain.run(["bisect", "--image", "/nonexistent/d2l.img", "--good", "a", "--bad", "b"]) == 125)
        // An invalid scenario file: d2l test's 2.
        let bad = try Self.file("recipe: x\nverfy: {}\n")
        defer { try? FileManager.default.removeItem(atPath: bad) }
        #expect(await D2LMain.run(["test", bad, "--list"]) == 2)
    }

    @Test func policiesAreFoundFromTheSubcommandName() {
        #expect(D2LMain.policy(for: ["verify", "x"]) == .verdict)
        #expect(D2LMain.policy(for: ["bisect"]) == .verdict)
        #expect(D2LMain.policy(for: ["build", "x"]) == .builder)
        #expect(D2LMain.policy(for: ["test"]) == .matrix)
        #expect(D2LMain.policy(for: ["--help"]) == .builder)
    }

    @Test func optionsWithFixedValuesAreTyped() throws {
        let verify = try VerifyCommand.parse(["disk.img", "--accel", "tcg", "--disk-bus", "sata", "--failed-units", "warn"])
        let request = try verify.request()
        #expect(request.machine.accelerator == .tcg)
        #expect(request.machine.diskBus == .sata)
        #expect(request.failedUnits == .warn)
        let build = try BuildCommand.parse(["in.tar", "--format", "qcow2", "--platform", "linux/x86_64"])
        #expect(build.format == .qcow2)
        #expect(build.platform == Architecture.amd64.platform)
        #expect(try BuildCommand.parse(["in.tar", "--platform", "linux/aarch64"]).platform?.description == "linux/arm64")
        #expect(try BuildCommand.parse(["in.tar"]).platform == nil)
        #expect(try BisectCommand.parse(["--image", "d", "--good", "a", "--bad", "b", "--order", "given"]).order == .given)
        #expect(try TestCommand.parse(["--engine", "buildah"]).engine == .buildah)
        // --help lists the values.
        let help = VerifyCommand.helpMessage()
        #expect(help.contains("auto") && help.contains("kvm") && help.contains("tcg"))
        #expect(help.contains("virtio") && help.contains("sata"))
    }

    @Test func aPlatformThatIsNotOneNamesTheForm() {
        #expect(throws: (any Error).self) { try BuildCommand.parse(["in.tar", "--platform", "nonsense"]) }
        do {
            _ = try BuildCommand.parse(["in.tar", "--platform", "nonsense"])
        } catch {
            #expect(BuildCommand.fullMessage(for: error).contains("os/architecture[/variant]"))
        }
    }

    @Test func theScenarioGivesDefaultsAndTheCommandLineWins() throws {
        let scenario = try Self.file(
            """
            recipe: anything
            verify:
              timeout: 300
              accel: tcg
              memory: 2048
              login: root
              stages:
                init:
                  pattern: ready
              run:
                - command: uname -r
                  expect: "^6"
            """)
        defer { try? FileManager.default.removeItem(atPath: scenario) }
        let command = try VerifyCommand.parse([
            "disk.img", "--scenario", scenario, "--timeout", "60", "--memory", "512", "--expect", "login=custom",
            "--run", "true",
        ])
        let request = try command.request()
        #expect(request.timeout == 60)  // given here
        #expect(request.machine.memoryMiB == 512)  // given here
        #expect(request.machine.accelerator == .tcg)  // from the scenario
        #expect(request.login == "root")  // from the scenario
        #expect(request.expectations == ["init=ready", "login=custom"])
        #expect(request.commands == [RunCheck(command: "uname -r", expectOutput: "^6"), RunCheck(command: "true")])
    }

    @Test func aMissingScenarioIsAUsageError() async {
        #expect(await D2LMain.run(["verify", "disk.img", "--scenario", "/nonexistent.yaml"]) == 125)
        #expect(throws: (any Error).self) { try VerifyCommand.parse(["disk.img", "--scenario", "/nonexistent.yaml"]) }
    }

    @Test func bisectOptionsThatExcludeEachOtherAreRefused() {
        #expect(throws: (any Error).self) {
            try BisectCommand.parse(["--image", "d", "--good", "a", "--bad", "b", "--initrd", "i", "--no-initrd"])
        }
        #expect(throws: (any Error).self) { try BisectCommand.parse(["--image", "d", "--good", "a", "--bad", "b", "--retries", "-1"]) }
    }
}
