import ArgumentParser
import D2LScenario
import D2LSupport
import Foundation

/// `d2l test`: build and verify every scenario, and report like a test suite.
struct TestCommand: PolicedCommand {
    static let exitPolicy = ExitPolicy.matrix

    static let configuration = CommandConfiguration(
        commandName: "test",
        abstract: "Build and boot the distro recipes in Scenarios/ and report like a test suite.",
        discussion: """
            Each scenario (a YAML file, see README.md) names a recipe in Images/, a container \
            archive or a disk; what to pass to d2l build; and what d2l verify must see. Recipes \
            are built with podman, docker or buildah (one engine build at a time, each recipe once); \
            builds and boots run --jobs at a time, each boot in its own d2l verify process.

            Results go to --output: per scenario its transcript, build and verify logs, and \
            (when it failed) its disk; for the run results.xml (JUnit), results.json and \
            report.html (boot timelines, works offline).

            Exit status: 0 when nothing failed (skips allowed), 1 when a scenario failed, \
            2 when a scenario file is invalid.
            """)

    @Argument(help: "Scenario files or directories (default: Scenarios/).")
    var paths: [String] = []

    @Option(help: "Scenarios built and booted at once (default: fits the machine's cores and memory).")
    var jobs: Int?

    @Option(
        name: .customLong("connect"),
        help: ArgumentHelp(
            "Boot on the libvirt daemon at URI, N boots at a time (repeatable; default: this machine's embedded driver).",
            discussion: "Longest scenarios first, over every host's slots. Each disk goes into a host's storage pool "
                + "'default' once for the run and is removed at its end. A host that fails (unreachable, a daemon "
                + "error, a dropped connection) is an infrastructure error: it gets no more boots, and the boot "
                + "moves to another host; the report keeps these apart from failed boots.",
            valueName: "URI[,slots=N]"))
    var hosts: [String] = []

    @Option(help: "Only scenarios whose name matches this regular expression.")
    var filter: String?

    @Option(name: .customLong("tag"), help: "Only scenarios with this tag (repeatable: any of them).")
    var tags: [String] = []

    @Option(help: "Boot a failed scenario again up to N times; a pass on retry is reported flaky.")
    var retries: Int = 0

    @Option(name: .shortAndLong, help: "Where results, transcripts and failed disks go.")
    var output: String = "d2l-test-results"

    @Option(help: "Also write the JUnit XML here.")
    var junit: String?

    @Flag(help: "Print the results as JSON on stdout.")
    var json = false

    @Option(help: "Container engine for recipes (default: the first installed of podman, docker, buildah).")
    var engine: ContainerEngine?

    @Option(help: "The recipes' directory (default: Images/ beside the scenarios' directory).")
    var images: String?

    @Flag(help: "Keep the disks of passed scenarios too.")
    var keepDisks = false

    @Flag(help: "List the scenarios that would run, and exit.")
    var list = false

    @Option(help: ArgumentHelp(
        "Run only shard I of N (1-based): a deterministic split, balanced by --durations, so that N CI jobs finish together.",
        valueName: "I/N"))
    var shard: String?

    @Option(help: ArgumentHelp("The results.json of an earlier run, whose times balance the shards.", valueName: "file"))
    var durations: String?

    @Flag(help: "Merge the results of shards: the arguments are their --output folders; writes one results.xml, results.json and report.html to --output.")
    var merge = false

    func validate() throws {
        if let shard { try usageErrors { _ = try Shard(parsing: shard) } }
        if merge, paths.isEmpty { throw ValidationError("--merge needs the --output folders of the shards") }
        if merge, shard != nil || list { throw ValidationError("--merge runs nothing: no --shard or --list with it") }
        if let jobs, jobs < 1 { throw ValidationError("--jobs must be at least 1") }
        try usageErrors { for host in hosts { _ = try MatrixRunner.Host(parsing: host) } }
        if retries < 0 { throw ValidationError("--retries must be 0 or more") }
        if let filter, (try? NSRegularExpression(pattern: filter)) == nil {
            throw ValidationError("--filter \(filter): not a valid regular expression")
        }
    }

    /// The nearest Images/ folder beside a folder holding the scenarios, or beside one of its parents.
    static func imagesDirectory(near directory: String) -> String {
        var url = URL(fileURLWithPath: directory).standardizedFileURL
        for _ in 0..<4 {
            url.deleteLastPathComponent()
            let candidate = url.appendingPathComponent("Images").path
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
        }
        return URL(fileURLWithPath: directory).deletingLastPathComponent().appendingPathComponent("Images").path
    }

    func run() async throws {
        Cleanup.shared.installSignalHandlers()
        if merge {
            try write(try MatrixReport.merge(directories: paths))
            return
        }
        let inputs = paths.isEmpty ? ["Scenarios"] : paths
        let scenarios: [Scenario]
        let imagesDirectory: String
        do {
            let files = try ScenarioParser.files(inputs)
            let firstDir = files.first.map { ($0 as NSString).deletingLastPathComponent } ?? "Scenarios"
            imagesDirectory = images ?? Self.imagesDirectory(near: firstDir)
            scenarios = try files.map { try ScenarioParser.parse(file: $0, imagesDirectory: imagesDirectory) }
        } catch let error as ScenarioError {
            throw error
        }
        let regex = filter.flatMap { try? NSRegularExpression(pattern: $0) }
        var chosen = scenarios.filter { s in
            (regex == nil || regex!.firstMatch(in: s.name, range: NSRange(s.name.startIndex..., in: s.name)) != nil)
                && (tags.isEmpty || !Set(tags).isDisjoint(with: s.tags))
        }
        if let shard {
            let times = try durations.map { try Shard.durations(fromResults: $0) } ?? [:]
            chosen = try Shard(parsing: shard).select(chosen, durations: times)
        }
        if list {
            for s in chosen {
                print("\(s.name)\t\(s.tags.joined(separator: ","))\t\(s.description ?? "")")
            }
            return
        }
        // A shard may be empty (more shards than scenarios): that is no error.
        guard !chosen.isEmpty || shard != nil else {
            throw ScenarioError(file: inputs.joined(separator: " "), message: "no scenario matches")
        }
        let outputDir = URL(fileURLWithPath: output).standardizedFileURL.path
        try FileManager.default.createDirectory(atPath: outputDir, withIntermediateDirectories: true)
        let binary = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var options = MatrixRunner.Options(
            jobs: jobs ?? MatrixRunner.defaultJobs, retries: retries, outputDirectory: outputDir,
            repositoryRoot: (imagesDirectory as NSString).deletingLastPathComponent, engine: engine,
            keepDisks: keepDisks, d2lBinary: binary)
        options.hosts = try hosts.map { try MatrixRunner.Host(parsing: $0) }
        let log: @Sendable (String) -> Void = { line in
            FileHandle.standardError.write(Data("d2l test: \(line)\n".utf8))
        }
        let runner = MatrixRunner(options: options, log: log)
        log("\(chosen.count) scenario(s), \(runner.parallelBoots) at a time"
            + (options.hosts.isEmpty ? "" : " on \(options.hosts.count) host(s)") + ", results in \(outputDir)")
        let started = Date()
        let results = await runner.run(chosen)
        try write(MatrixReport(results: results, seconds: Date().timeIntervalSince(started)))
    }

    /// Writes results.xml, results.json and report.html to --output (and --junit), prints the table or
    /// JSON, and fails when a scenario did.
    private func write(_ report: MatrixReport) throws {
        let outputDir = URL(fileURLWithPath: output).standardizedFileURL.path
        try FileManager.default.createDirectory(atPath: outputDir, withIntermediateDirectories: true)
        let junitText = report.junit()
        try junitText.write(toFile: outputDir + "/results.xml", atomically: true, encoding: .utf8)
        if let junit { try junitText.write(toFile: junit, atomically: true, encoding: .utf8) }
        let jsonText = try report.json()
        try jsonText.write(toFile: outputDir + "/results.json", atomically: true, encoding: .utf8)
        try report.html(relativeTo: outputDir).write(toFile: outputDir + "/report.html", atomically: true, encoding: .utf8)
        if json {
            print(jsonText)
        } else {
            print(report.table())
        }
        FileHandle.standardError.write(Data("d2l test: report: \(outputDir)/report.html\n".utf8))
        let c = report.counts
        if c.failed + c.errors > 0 { throw Reported(category: .failed) }
    }
}
