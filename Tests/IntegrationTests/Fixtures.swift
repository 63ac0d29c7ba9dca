import D2LSupport
import Foundation
import Testing

/// Real inputs for the integration tests: the d2l binary, the Debian bookworm
/// recipe saved as docker-archive and oci-archive, and a disk built from it.
enum Fixtures {
    static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// The d2l executable built beside the test bundle (or $D2L_BINARY).
    static func d2lBinary() throws -> String {
        if let path = ProcessInfo.processInfo.environment["D2L_BINARY"] { return path }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let candidate = ((exe as NSString).deletingLastPathComponent as NSString).appendingPathComponent("d2l")
        guard FileManager.default.isExecutableFile(atPath: candidate) else {
            throw FixtureError("d2l binary not found beside \(exe); run `swift build` first or set D2L_BINARY")
        }
        return candidate
    }

    /// The Debian bookworm recipe as a docker-archive (built and cached by Scripts/build-recipe).
    static func debianDockerArchive() async throws -> String {
        try await Shared.shared.recipe()
    }

    /// The same image as an oci-archive.
    static func debianOCIArchive() async throws -> String {
        let docker = try await debianDockerArchive()
        return String(docker.dropLast(".docker.tar".count)) + ".oci.tar"
    }

    /// A raw disk built by `d2l build` from the Debian recipe, with an empty root password; built once per run.
    static func debianDisk() async throws -> String {
        try await Shared.shared.disk()
    }

    /// A scratch directory every user can write (the build runs as nobody).
    static func scratchDirectory(_ name: String) throws -> String {
        let dir = NSTemporaryDirectory() + "d2l-it-\(getpid())-\(name)"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        chmod(dir, 0o1777)
        return dir
    }

    /// Runs d2l; returns its exit status, stdout and stderr.
    @discardableResult
    static func d2l(_ arguments: [String], asUser user: String? = nil, environment: [String: String] = [:]) async throws
        -> (status: Int32, stdout: String, stderr: String)
    {
        var command = [try d2lBinary()] + arguments
        // A passing boot waits `--settle` (8 s) after its prompt for a late crash; the recorded cases
        // test that wait, so the boots here settle for 2 s (a test may give its own).
        if arguments.first == "verify", !arguments.contains("--settle"), !arguments.contains("--replay") {
            command += ["--settle", "2"]
        }
        if let user {
            command = ["setpriv", "--reuid=\(user)", "--regid=\(user == "nobody" ? "nogroup" : user)", "--clear-groups"]
                + command
        }
        return try await run(command, environment: environment)
    }

    static func run(_ command: [String], environment: [String: String] = [:]) async throws
        -> (status: Int32, stdout: String, stderr: String)
    {
        let r = await ProcessRunner.capture(command, environment: environment)
        return (r.status, r.stdout, r.stderr)
    }

    /// Caches the recipe and the disk for the whole test run.
    actor Shared {
        static let shared = Shared()
        private var recipeTask: Task<String, any Error>?
        private var diskTask: Task<String, any Error>?

        func recipe() async throws -> String {
            let task = recipeTask ?? Task {
                if let given = ProcessInfo.processInfo.environment["D2L_RECIPE_DEBIAN_BOOKWORM"],
                    FileManager.default.fileExists(atPath: given)
                {
                    return given
                }
                let result = try await Fixtures.run([Fixtures.repositoryRoot + "/Scripts/build-recipe", "debian-bookworm"])
                guard result.status == 0 else {
                    throw FixtureError("Scripts/build-recipe debian-bookworm failed:\n\(result.stderr)")
                }
                return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            recipeTask = task
            return try await task.value
        }

        /// The busybox-tiny recipe's disk (hybrid; its boot to the prompt takes seconds), built once.
        func tinyDisk() async throws -> String {
            let task = tinyTask ?? Task {
                let recipe = try await Fixtures.run([Fixtures.repositoryRoot + "/Scripts/build-recipe", "busybox-tiny"])
                guard recipe.status == 0 else {
                    throw FixtureError("Scripts/build-recipe busybox-tiny failed:\n\(recipe.stderr)")
                }
                let path = try Fixtures.scratchDirectory("tiny") + "/tiny.img"
                let result = try await Fixtures.d2l([
                    "build", recipe.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "-o", path, "-q", "--root-password-empty",
                ])
                guard result.status == 0 else { throw FixtureError("d2l build busybox-tiny failed:\n\(result.stderr)") }
                return path
            }
            tinyTask = task
            return try await task.value
        }
        private var tinyTask: Task<String, any Error>?

        func disk() async throws -> String {
            let archive = try await recipe()
            let task = diskTask ?? Task {
                let dir = try Fixtures.scratchDirectory("disk")
                let path = dir + "/debian.img"
                let result = try await Fixtures.d2l(["build", archive, "-o", path, "--root-password-empty", "-q"])
                guard result.status == 0 else { throw FixtureError("d2l build failed:\n\(result.stderr)") }
                return path
            }
            diskTask = task
            return try await task.value
        }
    }
}

struct FixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
