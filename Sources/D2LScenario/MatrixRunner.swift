import D2LDiskModel
import D2LSupport
import D2LVerify
import Foundation

/// The result of one scenario: build, boot stages, verdict.
public struct ScenarioResult: Sendable, Codable {
    public enum Verdict: String, Sendable, Codable { case passed, failed, flaky, skipped, error }

    public struct Stage: Sendable, Codable {
        public var name: String
        public var reached: Bool
        public var seconds: Double?
        public var failure: String?
    }

    public var name: String
    public var file: String
    public var tags: [String]
    public var verdict: Verdict
    public var reason: String?
    public var buildSeconds: Double?
    public var bootSeconds: Double?
    public var stages: [Stage] = []
    public var kernelVersion: String?
    public var attempts: Int = 0
    /// Wall time of the whole scenario (its build and its boots), for balancing CI shards.
    public var seconds: Double?
    public var disk: String?
    public var transcript: String?
    public var lastLines: [String] = []
    /// The boot's `--run` commands with their status and output.
    public var commands: [CommandResult] = []
    /// Kernel events, failed units under warn, and stages not seen, with their lines.
    public var warnings: [BootWarning] = []
    /// The lines that decided a failure (a panic's trace).
    public var failureLines: [String] = []
    /// The libvirt host (`--connect` URI) the boot ran on; nil for this machine's embedded driver.
    public var host: String?
    /// Hosts that failed under this scenario (unreachable, a daemon error, a dropped connection),
    /// each with why; its boot then moved to another host. Kept apart from the boot's own verdict.
    public var infrastructureErrors: [String] = []
}

/// Builds and verifies scenarios, several at once, each boot in its own `d2l verify` process.
public final class MatrixRunner: @unchecked Sendable {
    /// A libvirt daemon boots go to (`d2l test --connect URI[,slots=N]`): `slots` boots at a time.
    public struct Host: Sendable, Equatable {
        public var uri: String
        public var slots: Int

        public init(uri: String, slots: Int = 1) {
            self.uri = uri
            self.slots = slots
        }

        /// Parses `URI[,slots=N]`.
        ///
        /// - Throws: `ScenarioError.invalid` for a missing URI or a slot count below 1.
        public init(parsing text: String) throws {
            var uri = text
            var slots = 1
            if let range = text.range(of: ",slots=", options: .backwards) {
                uri = String(text[..<range.lowerBound])
                guard let count = Int(text[range.upperBound...]), count >= 1 else {
                    throw ScenarioError(file: "--connect", message: "\(text): slots=N needs a whole number of at least 1")
                }
                slots = count
            }
            guard !uri.isEmpty else { throw ScenarioError(file: "--connect", message: "\(text): give URI[,slots=N]") }
            self.init(uri: uri, slots: slots)
        }
    }

    /// Where one boot runs: slot `index` of a host, or of this machine's embedded driver (`host` nil).
    struct Slot: Sendable {
        var host: String?
        var index: Int
    }

    public struct Options: Sendable {
        public var jobs: Int
        /// The libvirt daemons boots go to; empty: this machine's embedded driver, `jobs` slots.
        public var hosts: [Host] = []
        public var retries: Int
        public var outputDirectory: String
        public var repositoryRoot: String
        public var engine: ContainerEngine?
        public var keepDisks: Bool
        public var d2lBinary: String
        public init(
            jobs: Int, retries: Int, outputDirectory: String, repositoryRoot: String, engine: ContainerEngine?,
            keepDisks: Bool, d2lBinary: String
        ) {
            self.jobs = jobs
            self.retries = retries
            self.outputDirectory = outputDirectory
            self.repositoryRoot = repositoryRoot
            self.engine = engine
            self.keepDisks = keepDisks
            self.d2lBinary = d2lBinary
        }
    }

    let options: Options
    let recipes: RecipeCache
    private let slotLock = NSLock()
    private var freeSlots: [Slot]
    /// Hosts that failed, with why: their slots are not handed out again.
    private var failedHosts: [String: String] = [:]
    let log: @Sendable (String) -> Void

    public init(options: Options, log: @escaping @Sendable (String) -> Void) {
        self.options = options
        self.recipes = RecipeCache(repositoryRoot: options.repositoryRoot, engine: options.engine, log: log)
        self.log = log
        if options.hosts.isEmpty {
            freeSlots = (1...max(1, options.jobs)).reversed().map { Slot(host: nil, index: $0) }
        } else {
            // Interleaved, so that boots spread over the hosts before a second slot of one is used.
            let most = options.hosts.map(\.slots).max() ?? 1
            freeSlots = (1...most).flatMap { index in
                options.hosts.filter { $0.slots >= index }.map { Slot(host: $0.uri, index: index) }
            }.reversed()
        }
    }

    /// The number of boots that can run at once: `jobs`, or the hosts' slots.
    public var parallelBoots: Int {
        options.hosts.isEmpty ? max(1, options.jobs) : options.hosts.reduce(0) { $0 + $1.slots }
    }

    /// Each concurrent boot gets its own embedded libvirt root, kept between boots, so that no boot
    /// waits on another's lock or pays for a fresh root's QEMU probe; or a slot of a host. Waits for a
    /// slot while every one is busy; nil once every host has failed.
    private func takeSlot() async -> Slot? {
        while true {
            let (slot, anyLeft): (Slot?, Bool) = slotLock.withLock {
                let anyLeft = options.hosts.isEmpty || options.hosts.contains { failedHosts[$0.uri] == nil }
                return (freeSlots.popLast(), anyLeft)
            }
            if let slot { return slot }
            if !anyLeft { return nil }
            try? await Task.sleep(for: .milliseconds(200))
        }
    }
    private func giveBack(_ slot: Slot) {
        slotLock.withLock {
            // A failed host's slots go out of use.
            if let host = slot.host, failedHosts[host] != nil { return }
            freeSlots.append(slot)
        }
    }

    /// Takes a host out of the run: its slots are not handed out again.
    private func fail(host: String, because reason: String) {
        slotLock.withLock {
            if failedHosts[host] == nil { failedHosts[host] = reason }
            freeSlots.removeAll { $0.host == host }
        }
    }

    /// The hosts that failed during the run, with why.
    public var hostFailures: [String: String] { slotLock.withLock { failedHosts } }

    /// Guests that run side by side share the cores instead of each asking for all of them
    /// (TCG runs a thread per virtual CPU); a scenario's own `cpus` wins, and a host's cores are its own.
    private func cpuArguments(_ scenario: Scenario, slot: Slot) -> [String] {
        guard scenario.verify.cpus == nil, slot.host == nil else { return [] }
        let cores = ProcessInfo.processInfo.activeProcessorCount
        return ["--cpus", String(max(1, min(2, cores / max(1, options.jobs))))]
    }

    private func connectArguments(slot: Slot) -> [String] {
        if let host = slot.host { return ["--connect", host] }
        if ProcessInfo.processInfo.environment["D2L_LIBVIRT_URI"] != nil { return [] }
        // Beside the default embedded root (as root, /var/cache/d2l/libvirt, which QEMU's user can reach).
        return ["--connect", LibvirtHypervisor.defaultURI(environment: [:]) + "-slot\(slot.index)"]
    }

    /// A default job count that fits the machine: one boot per core and per 1.5 GiB free memory.
    public static var defaultJobs: Int {
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let memoryGiB = Double(ProcessInfo.processInfo.physicalMemory) / Double(1 << 30)
        return max(1, min(cores, Int((memoryGiB - 1) / 1.5)))
    }

    public func run(_ scenarios: [Scenario]) async -> [ScenarioResult] {
        var results = [[ScenarioResult]?](repeating: nil, count: scenarios.count)
        var seconds = [Double](repeating: 0, count: scenarios.count)
        // Longest first (by the last run's times; unknown ones first of all), so that a
        // slow boot does not start last and leave the other slots idle at the end.
        let known = Self.loadDurations()
        let order = scenarios.indices.sorted {
            (known[scenarios[$0].name] ?? .infinity) > (known[scenarios[$1].name] ?? .infinity)
        }
        await withTaskGroup(of: (Int, [ScenarioResult], Double).self) { group in
            var next = 0
            func startNext() {
                guard next < order.count else { return }
                let index = order[next]
                next += 1
                group.addTask {
                    let started = Date()
                    let result = await self.runOne(scenarios[index])
                    return (index, result, Date().timeIntervalSince(started))
                }
            }
            for _ in 0..<parallelBoots { startNext() }
            for await (index, result, elapsed) in group {
                results[index] = result.map { var r = $0; r.seconds = elapsed; return r }
                seconds[index] = elapsed
                result.forEach(report)
                startNext()
            }
        }
        var durations = known
        for (i, r) in results.enumerated() where r?.allSatisfy({ $0.verdict == .passed || $0.verdict == .flaky }) == true {
            durations[scenarios[i].name] = seconds[i]
        }
        Self.saveDurations(durations)
        // Disks uploaded to the hosts' pools go with the run (RemoteUploads' policy).
        RemoteUploads.shared.removeAll()
        return results.compactMap { $0 }.flatMap { $0 }
    }

    static var durationsFile: String { CacheDirectory.path + "/test-durations.json" }

    static func loadDurations() -> [String: Double] {
        guard let data = FileManager.default.contents(atPath: durationsFile),
            let map = try? JSONDecoder().decode([String: Double].self, from: data)
        else { return [:] }
        return map
    }

    static func saveDurations(_ map: [String: Double]) {
        guard let data = try? JSONEncoder().encode(map) else { return }
        try? FileManager.default.createDirectory(atPath: CacheDirectory.path, withIntermediateDirectories: true)
        try? data.write(to: URL(fileURLWithPath: durationsFile), options: .atomic)
    }

    private func report(_ r: ScenarioResult) {
        var line = "\(r.verdict.rawValue.uppercased()) \(r.name)"
        if let k = r.kernelVersion { line += " (kernel \(k))" }
        if let b = r.bootSeconds { line += String(format: ", login at %.1f s", b) }
        if let reason = r.reason { line += ": \(reason)" }
        if let host = r.host { line += " [on \(host)]" }
        log(line)
        for error in r.infrastructureErrors { log("  infrastructure error (not the boot's): \(error)") }
        if r.verdict == .failed || r.verdict == .error {
            if let d = r.disk { log("  disk:       \(d)") }
            if let t = r.transcript { log("  transcript: \(t)") }
            for l in r.lastLines.suffix(10) { log("  | \(l)") }
        }
    }

    /// Builds the scenario's disk once and boots it under each firmware it names (one result each), or
    /// once under what the disk claims.
    func runOne(_ scenario: Scenario) async -> [ScenarioResult] {
        var result = ScenarioResult(name: scenario.name, file: scenario.file, tags: scenario.tags, verdict: .error)
        let dir = (options.outputDirectory as NSString).appendingPathComponent(scenario.name)
        try? FileManager.default.removeItem(atPath: dir)
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        } catch {
            result.reason = "cannot create \(dir): \(error)"
            return [result]
        }

        // 1. The disk: from a recipe, an archive, or given.
        let disk: String
        switch scenario.source {
        case .disk(let path):
            disk = path
        case .recipe, .archive:
            let archive: String
            if case .recipe(let name) = scenario.source {
                switch await recipes.archive(for: name) {
                case .success(let path): archive = path
                case .skipped(let why):
                    result.verdict = .skipped
                    result.reason = why
                    return [result]
                case .failure(let why):
                    result.reason = "recipe \(name) did not build: \(why)"
                    return [result]
                }
            } else if case .archive(let path) = scenario.source {
                archive = path
            } else {
                return [result]
            }
            let ext = (scenario.build.format ?? .raw).fileExtension
            disk = (dir as NSString).appendingPathComponent("disk.\(ext)")
            log("building \(scenario.name)")
            let started = Date()
            let build = await ProcessRunner.capture(
                [options.d2lBinary, "build", archive, "-o", disk, "--force", "--json", "-q"] + scenario.buildArguments)
            result.buildSeconds = Date().timeIntervalSince(started)
            try? build.stderr.write(toFile: (dir as NSString).appendingPathComponent("build.log"), atomically: false, encoding: .utf8)
            guard build.status == 0 else {
                result.verdict = .failed
                result.reason = "d2l build failed: " + (build.stderr.split(separator: "\n").last.map(String.init) ?? "status \(build.status)")
                return [result]
            }
            if let enlarge = scenario.build.enlarge {
                // As a user enlarging the disk after the build would: the image's partitions stay as built.
                let resize = await ProcessRunner.capture(
                    ["qemu-img", "resize", "-f", (scenario.build.format ?? .raw).qemuFormat, disk, "+" + enlarge])
                guard resize.status == 0 else {
                    result.verdict = .error
                    result.reason = "could not test: qemu-img resize +\(enlarge) failed: " + resize.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
                    return [result]
                }
                log("enlarged \(scenario.name)'s disk by \(enlarge)")
            }
        }
        result.disk = disk

        // 2. Boot it under each firmware.
        let firmware: [Firmware?] = scenario.verify.firmware ?? [nil]
        var results: [ScenarioResult] = []
        for one in firmware {
            var boot = result
            if let one { boot.name += " (\(one))" }
            await self.boot(scenario, disk: disk, firmware: one, directory: dir, into: &boot)
            if let expect = scenario.expect { Self.judge(&boot, against: expect) }
            results.append(boot)
        }
        if !options.keepDisks, !scenario.source.isGivenDisk, results.allSatisfy({ $0.verdict == .passed || $0.verdict == .flaky }) {
            try? FileManager.default.removeItem(atPath: disk)
            for index in results.indices { results[index].disk = nil }
        }
        return results
    }

    /// A scenario that proves a failure is caught passes when the boot ended as expected.
    static func judge(_ result: inout ScenarioResult, against expect: Scenario.Expectation) {
        let actual: Scenario.Expectation.Verdict
        switch result.verdict {
        case .passed, .flaky: actual = .passed
        case .failed: actual = .failed
        case .error: actual = .couldNotTest
        case .skipped: return
        }
        let reason = result.reason ?? ""
        let matches = expect.reason.map { reason.range(of: $0, options: .regularExpression) != nil } ?? true
        if actual == expect.verdict, matches {
            if actual != .passed { result.reason = "\(actual.rawValue) as expected: \(reason)" }
            result.verdict = .passed
        } else {
            result.reason = "expected \(expect.verdict.rawValue)"
                + (expect.reason.map { " with a reason matching \($0)" } ?? "") + ", got \(actual.rawValue): \(reason)"
            result.verdict = .failed
        }
    }

    /// Boots the disk once under `firmware` (the scenario's defaults otherwise), retrying a failed boot
    /// up to `retries` times.
    private func boot(
        _ scenario: Scenario, disk: String, firmware: Firmware?, directory dir: String, into result: inout ScenarioResult
    ) async {
        let suffix = firmware.map { "-\($0)" } ?? ""
        let transcript = (dir as NSString).appendingPathComponent("transcript\(suffix).txt")
        result.transcript = transcript
        var failures = 0
        var attempt = 1
        while attempt <= options.retries + 1 {
            result.attempts = attempt
            guard let slot = await takeSlot() else {
                result.verdict = .error
                result.reason = "could not test: every host failed (" + hostFailures.map { "\($0.key): \($0.value)" }.sorted()
                    .joined(separator: "; ") + ")"
                return
            }
            log("booting \(scenario.name)" + (attempt > 1 ? " (attempt \(attempt))" : "") + (slot.host.map { " on \($0)" } ?? ""))
            result.host = slot.host
            // The host, not the boot, failed: the same attempt goes to another host.
            func hostFailed(_ host: String, _ problem: String) {
                fail(host: host, because: problem)
                result.infrastructureErrors.append("\(host): \(problem)")
                log("host \(host) failed: \(problem); \(scenario.name) moves to another host")
            }
            if let host = slot.host, let problem = await place(disk, on: host) {
                giveBack(slot)
                hostFailed(host, problem)
                continue
            }
            let verify = await ProcessRunner.capture(
                [options.d2lBinary, "verify", disk, "--json", "--transcript", transcript,
                 "--junit", (dir as NSString).appendingPathComponent("verify\(suffix).junit.xml")]
                    + connectArguments(slot: slot) + cpuArguments(scenario, slot: slot)
                    + ["--scenario", URL(fileURLWithPath: scenario.file).standardizedFileURL.path]
                    + (firmware.map { ["--firmware", $0.rawValue] } ?? []))
            giveBack(slot)
            if let host = slot.host, verify.status == 125, let problem = Self.hostProblem(verify.stderr) {
                hostFailed(host, problem)
                continue
            }
            defer { attempt += 1 }
            try? verify.stdout.write(toFile: (dir as NSString).appendingPathComponent("verify\(suffix).json"), atomically: false, encoding: .utf8)
            try? verify.stderr.write(toFile: (dir as NSString).appendingPathComponent("verify\(suffix).log"), atomically: false, encoding: .utf8)
            apply(verifyJSON: verify.stdout, to: &result)
            switch verify.status {
            case 0:
                result.verdict = failures > 0 ? .flaky : .passed
                if failures > 0 { result.reason = "passed on attempt \(attempt) of \(options.retries + 1)" }
                return
            case 1:
                failures += 1
                result.verdict = .failed
                if result.reason == nil { result.reason = "did not boot" }
                if scenario.expect?.verdict == .failed { return }  // the failure it proves: no retry
            default:
                result.verdict = .error
                let said = result.reason ?? verify.stderr.split(separator: "\n").last.map(String.init)
                result.reason = "could not test: " + (said ?? "d2l verify exited \(verify.status)")
                return
            }
        }
    }

    /// Places the disk in a host's storage pool once for the whole run (the boots there find it by its
    /// content and leave it); nil when it is there, else why the host failed.
    private func place(_ disk: String, on host: String) async -> String? {
        await Task.detached {
            do {
                let connection = try LibvirtConnection.shared(uri: host)
                if let lost = connection.lost { return "the connection was lost: \(lost)" }
                let format = try DiskFormat.detect(path: disk)
                _ = try Self.uploadLock.withLock {
                    try RemoteUploads.shared.place(disk, format: format, pool: "default", on: connection)
                }
                return nil
            } catch {
                return "\(error)"
            }
        }.value
    }
    private static let uploadLock = NSLock()

    /// Why a `d2l verify` that could not test (125) did so because of its host: libvirt failed (no
    /// connection, a daemon error, a dropped connection); nil for the scenario's own problems.
    static func hostProblem(_ stderr: String) -> String? {
        let lines = stderr.split(separator: "\n").map(String.init)
        guard let line = lines.last(where: { $0.contains("could not test") }) else { return nil }
        let markers = ["libvirt:", "connection to the libvirt daemon was lost", "storage pool", "uploading"]
        guard markers.contains(where: { line.contains($0) }) else { return nil }
        return line.replacingOccurrences(of: "d2l verify: could not test: ", with: "")
    }

    /// Takes what the verdict says from `d2l verify --json`: its boot, or of several the first that
    /// did not pass (else the last).
    private func apply(verifyJSON: String, to result: inout ScenarioResult) {
        guard let verdict = try? VerifyResult.decode(Data(verifyJSON.utf8)),
            let report = verdict.boots.first(where: { !$0.passed }) ?? verdict.boots.last
        else { return }
        result.kernelVersion = report.kernelVersion ?? result.kernelVersion
        result.stages = report.stages.map {
            ScenarioResult.Stage(name: $0.name, reached: $0.reached, seconds: $0.seconds, failure: $0.failure)
        }
        result.bootSeconds = result.stages.last(where: { $0.reached })?.seconds
        if report.passed {
            result.reason = nil
        } else {
            result.reason = [report.failedStage.map { "stage \($0)" }, report.reason].compactMap { $0 }.joined(separator: ": ")
        }
        result.lastLines = report.lastLines
        result.commands = report.commands
        result.warnings = report.warnings
        result.failureLines = report.failureLines
    }
}

/// The container engines that build recipes (Scripts/build-recipe --engine).
public enum ContainerEngine: String, Sendable, Codable, CaseIterable {
    case podman, docker, buildah
}

/// Builds each recipe once (one engine build at a time) and remembers the outcome.
actor RecipeCache {
    enum Outcome: Sendable { case success(String), skipped(String), failure(String) }
    private var tasks: [String: Task<Outcome, Never>] = [:]
    private var previous: Task<Outcome, Never>?
    let repositoryRoot: String
    let engine: ContainerEngine?
    let log: @Sendable (String) -> Void

    init(repositoryRoot: String, engine: ContainerEngine?, log: @escaping @Sendable (String) -> Void) {
        self.repositoryRoot = repositoryRoot
        self.engine = engine
        self.log = log
    }

    func archive(for recipe: String) async -> Outcome {
        if let task = tasks[recipe] { return await task.value }
        let before = previous
        let root = repositoryRoot
        let engine = engine
        let log = log
        let task = Task<Outcome, Never> {
            _ = await before?.value  // engine builds run one after another
            log("building recipe \(recipe)")
            var command = [root + "/Scripts/build-recipe"]
            if let engine { command += ["--engine", engine.rawValue] }
            let result = await ProcessRunner.capture(command + [recipe])
            switch result.status {
            case 0: return .success(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
            case 3:
                let why = result.stderr.split(separator: "\n").last { $0.hasPrefix("skipped") }
                return .skipped(why.map(String.init) ?? "skipped: base image not available")
            default:
                return .failure(result.stderr.split(separator: "\n").suffix(5).joined(separator: "\n"))
            }
        }
        tasks[recipe] = task
        previous = task
        return await task.value
    }
}
