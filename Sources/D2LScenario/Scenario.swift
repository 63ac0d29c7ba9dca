import D2LDiskModel
import D2LSupport
import D2LVerify
import Foundation
import Yams

/// What one recipe (or prebuilt archive or disk) must show when it boots.
public struct Scenario: Sendable, Codable, Equatable {
    public enum Source: Sendable, Codable, Equatable {
        /// Images/NAME/Dockerfile, built with the local container engine.
        case recipe(String)
        /// A container image file (docker-archive, OCI, rootfs tar).
        case archive(String)
        /// A disk image, verified as it is.
        case disk(String)

        /// A disk the scenario names (never deleted by the runner).
        public var isGivenDisk: Bool {
            if case .disk = self { return true }
            return false
        }
    }

    public struct Build: Sendable, Codable, Equatable {
        public var format: DiskFormat?
        public var size: String?
        public var headroom: String?
        public var append: String?
        public var hostname: String?
        public var rootPasswordEmpty = true
        public var rootPassword: String?
        public var boot: BootMode?
        public var partitionTable: PartitionTable.Scheme?
        public var secureBoot = false
        /// `--network`: dhcp or none.
        public var network: String?
        /// `--ssh-authorized-key` files, resolved against the scenario's folder.
        public var sshAuthorizedKeys: [String] = []
        /// `--user NAME[:PASSWORD]`.
        public var user: String?
        /// false: `--no-container-service`.
        public var containerService = true
        /// Bytes to add to the disk after the build (`qemu-img resize +SIZE`), as a user enlarging it would.
        public var enlarge: String?
    }

    public struct StageOverride: Sendable, Codable, Equatable {
        public var name: String
        public var pattern: String?
        public var deadline: Int?
    }

    public struct Command: Sendable, Codable, Equatable {
        public var command: String
        public var expect: String?
    }

    public struct Verify: Sendable, Codable, Equatable {
        public var timeout: Int?
        public var memory: Int?
        public var cpus: Int?
        public var accel: Accelerator?
        public var diskBus: DiskBus?
        /// The guest's NIC: none, or one on QEMU's user-mode network.
        public var network: GuestNetwork?
        public var failedUnits: FailedUnitsPolicy?
        public var kernelWarnings: KernelWarningsPolicy?
        /// The firmware to boot under, one boot (and one result) each; nil: what the disk claims.
        public var firmware: [Firmware]?
        public var settle: Double?
        public var silence: Double?
        public var stages: [StageOverride] = []
        public var login: String?
        public var run: [Command] = []
    }

    /// What the boot must end in, for a scenario that proves a failure is caught: the verdict of
    /// `d2l verify` and a regular expression its reason must match.
    public struct Expectation: Sendable, Codable, Equatable {
        public enum Verdict: String, Sendable, Codable, CaseIterable {
            case passed, failed
            case couldNotTest = "could-not-test"
        }
        public var verdict: Verdict
        public var reason: String?
    }

    public var name: String
    public var file: String
    public var description: String?
    public var source: Source
    /// nil: the boot must pass.
    public var expect: Expectation?
    public var tags: [String]
    public var build: Build
    public var verify: Verify

    /// The arguments of `d2l build` (after the input).
    public var buildArguments: [String] {
        var a: [String] = []
        if let f = build.format { a += ["--format", f.rawValue] }
        if let s = build.size { a += ["--size", s] }
        if let h = build.headroom { a += ["--headroom", h] }
        if let x = build.append { a += ["--append", x] }
        if let h = build.hostname { a += ["--hostname", h] }
        if let p = build.rootPassword { a += ["--root-password", p] } else if build.rootPasswordEmpty { a.append("--root-password-empty") }
        if let b = build.boot { a += ["--boot", b.rawValue] }
        if let t = build.partitionTable { a += ["--partition-table", t.rawValue] }
        if build.secureBoot { a.append("--secure-boot") }
        if let n = build.network { a += ["--network", n] }
        for key in build.sshAuthorizedKeys { a += ["--ssh-authorized-key", key] }
        if let u = build.user { a += ["--user", u] }
        if !build.containerService { a.append("--no-container-service") }
        return a
    }
}

extension Scenario.Verify {
    /// Lays this verify section on `request` as its defaults: values it gives replace the request's,
    /// and its stages and commands come before those the request already has (so that options given
    /// on the command line, applied after, win).
    public func apply(to request: inout VerifyRequest) {
        if let timeout { request.timeout = timeout }
        if let memory { request.machine.memoryMiB = memory }
        if let cpus { request.machine.cpus = cpus }
        if let accel { request.machine.accelerator = accel }
        if let diskBus { request.machine.diskBus = diskBus }
        if let network { request.machine.network = network }
        if let failedUnits { request.failedUnits = failedUnits }
        if let firmware { request.firmware = firmware }
        if let kernelWarnings { request.kernelWarnings = kernelWarnings }
        if let settle { request.settle = settle }
        if let silence { request.silence = silence }
        var expectations: [String] = []
        var deadlines: [String] = []
        for stage in stages {
            if let p = stage.pattern { expectations.append("\(stage.name)=\(p)") }
            if let d = stage.deadline { deadlines.append("\(stage.name)=\(d)") }
        }
        request.expectations = expectations + request.expectations
        request.deadlines = deadlines + request.deadlines
        if let login { request.login = login }
        request.commands = run.map { RunCheck(command: $0.command, expectOutput: $0.expect) } + request.commands
    }
}

/// A scenario file that cannot be used, with where and why.
public struct ScenarioError: Error, CustomStringConvertible, Sendable, CategorizedError {
    public var file: String
    public var message: String
    public init(file: String, message: String) {
        self.file = file
        self.message = message
    }
    public var description: String { "\(file): \(message)" }
    public var category: ErrorCategory { .usage }
}

/// Reads and checks scenario files.
public enum ScenarioParser {
    static let topKeys: Set<String> = ["description", "recipe", "archive", "disk", "tags", "build", "verify", "expect"]
    static let expectKeys: Set<String> = ["verdict", "reason"]
    static let buildKeys: Set<String> = [
        "format", "size", "headroom", "append", "hostname", "root-password-empty", "root-password", "boot",
        "partition-table", "secure-boot", "network", "ssh-authorized-key", "user", "container-service", "enlarge",
    ]
    static let verifyKeys: Set<String> = [
        "timeout", "memory", "cpus", "accel", "disk-bus", "network", "failed-units", "kernel-warnings", "settle", "silence", "firmware",
        "stages", "login", "run",
    ]
    static let stageKeys: Set<String> = ["pattern", "deadline"]
    static let runKeys: Set<String> = ["command", "expect"]

    /// Lists the scenario files named: directories give their *.yaml and *.yml files, sorted.
    ///
    /// - Throws: `ScenarioError` when a path does not exist or a directory cannot be listed.
    public static func files(_ paths: [String]) throws -> [String] {
        var out: [String] = []
        for path in paths {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                throw ScenarioError(file: path, message: "no such file or directory")
            }
            if isDir.boolValue {
                let names = try FileManager.default.contentsOfDirectory(atPath: path)
                    .filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") }.sorted()
                out += names.map { (path as NSString).appendingPathComponent($0) }
            } else {
                out.append(path)
            }
        }
        return out
    }

    /// Parses one file; `imagesDirectory` is where recipes live (to check they exist; nil: not checked).
    ///
    /// - Throws: `ScenarioError` naming the file, the key and what is wrong.
    public static func parse(file: String, imagesDirectory: String?) throws -> Scenario {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw ScenarioError(file: file, message: "cannot read")
        }
        return try parse(String(decoding: data, as: UTF8.self), file: file, imagesDirectory: imagesDirectory)
    }

    /// - Throws: `ScenarioError` naming the file, the key and what is wrong.
    public static func parse(_ text: String, file: String, imagesDirectory: String?) throws -> Scenario {
        func fail(_ message: String) -> ScenarioError { ScenarioError(file: file, message: message) }
        let loaded: Any?
        do { loaded = try Yams.load(yaml: text) } catch { throw fail("not valid YAML: \(error)") }
        guard let top = loaded as? [String: Any] else { throw fail("expected a mapping of keys (recipe, build, verify, ...)") }
        try checkKeys(top, allowed: topKeys, at: "", fail: fail)

        let name = ((file as NSString).lastPathComponent as NSString).deletingPathExtension
        let sources = ["recipe", "archive", "disk"].filter { top[$0] != nil }
        guard sources.count == 1 else {
            throw fail("give exactly one of recipe, archive or disk (found: \(sources.isEmpty ? "none" : sources.joined(separator: ", ")))")
        }
        let baseDir = (file as NSString).deletingLastPathComponent
        func resolve(_ p: String) -> String { p.hasPrefix("/") ? p : (baseDir as NSString).appendingPathComponent(p) }
        let source: Scenario.Source
        switch sources[0] {
        case "recipe":
            let recipe = try string(top["recipe"], "recipe", fail)
            if let imagesDirectory {
                let dockerfile = (imagesDirectory as NSString).appendingPathComponent(recipe + "/Dockerfile")
                guard FileManager.default.fileExists(atPath: dockerfile) else {
                    throw fail("recipe \(recipe): \(dockerfile) does not exist")
                }
            }
            source = .recipe(recipe)
        case "archive": source = .archive(resolve(try string(top["archive"], "archive", fail)))
        default: source = .disk(resolve(try string(top["disk"], "disk", fail)))
        }

        var tags: [String] = []
        if let t = top["tags"] {
            guard let list = t as? [Any] else { throw fail("tags: expected a list of words") }
            tags = try list.map { try string($0, "tags", fail) }
        }

        var build = Scenario.Build()
        if let b = top["build"] {
            guard let map = b as? [String: Any] else { throw fail("build: expected a mapping") }
            try checkKeys(map, allowed: buildKeys, at: "build.", fail: fail)
            build.format = try map["format"].map { try choice(DiskFormat.self, $0, "build.format", fail) }
            build.size = try map["size"].map { try string($0, "build.size", fail) }
            build.headroom = try map["headroom"].map { try string($0, "build.headroom", fail) }
            build.append = try map["append"].map { try string($0, "build.append", fail) }
            build.hostname = try map["hostname"].map { try string($0, "build.hostname", fail) }
            build.rootPassword = try map["root-password"].map { try string($0, "build.root-password", fail) }
            build.boot = try map["boot"].map { try choice(BootMode.self, $0, "build.boot", fail) }
            build.partitionTable = try map["partition-table"].map {
                try choice(PartitionTable.Scheme.self, $0, "build.partition-table", fail)
            }
            if let e = map["secure-boot"] {
                guard let flag = e as? Bool else { throw fail("build.secure-boot: expected true or false") }
                build.secureBoot = flag
            }
            if let n = map["network"] {
                let text = try string(n, "build.network", fail)
                guard ["dhcp", "none"].contains(text) else { throw fail("build.network: \(text) is not one of dhcp, none") }
                build.network = text
            }
            if let k = map["ssh-authorized-key"] {
                let files = (k as? [Any]) ?? [k]
                build.sshAuthorizedKeys = try files.map { resolve(try string($0, "build.ssh-authorized-key", fail)) }
                for file in build.sshAuthorizedKeys where !FileManager.default.isReadableFile(atPath: file) {
                    throw fail("build.ssh-authorized-key: \(file) cannot be read")
                }
            }
            build.user = try map["user"].map { try string($0, "build.user", fail) }
            if let e = map["container-service"] {
                guard let flag = e as? Bool else { throw fail("build.container-service: expected true or false") }
                build.containerService = flag
            }
            if let e = map["enlarge"] {
                let text = try string(e, "build.enlarge", fail)
                guard let last = text.last, "KMGT".contains(last.uppercased()), let value = Double(text.dropLast()), value > 0 else {
                    throw fail("build.enlarge: \(text): give a size to add, such as 1G or 512M")
                }
                build.enlarge = text
            }
            if let e = map["root-password-empty"] {
                guard let flag = e as? Bool else { throw fail("build.root-password-empty: expected true or false") }
                build.rootPasswordEmpty = flag
            }
        }

        var verify = Scenario.Verify()
        if let v = top["verify"] {
            guard let map = v as? [String: Any] else { throw fail("verify: expected a mapping") }
            try checkKeys(map, allowed: verifyKeys, at: "verify.", fail: fail)
            verify.timeout = try map["timeout"].map { try int($0, "verify.timeout", fail) }
            verify.memory = try map["memory"].map { try int($0, "verify.memory", fail) }
            verify.cpus = try map["cpus"].map { try int($0, "verify.cpus", fail) }
            verify.accel = try map["accel"].map { try choice(Accelerator.self, $0, "verify.accel", fail) }
            verify.diskBus = try map["disk-bus"].map { try choice(DiskBus.self, $0, "verify.disk-bus", fail) }
            verify.network = try map["network"].map { try choice(GuestNetwork.self, $0, "verify.network", fail) }
            verify.failedUnits = try map["failed-units"].map { try choice(FailedUnitsPolicy.self, $0, "verify.failed-units", fail) }
            verify.kernelWarnings = try map["kernel-warnings"].map {
                try choice(KernelWarningsPolicy.self, $0, "verify.kernel-warnings", fail)
            }
            verify.settle = try map["settle"].map { try seconds($0, "verify.settle", fail) }
            if let f = map["firmware"] {
                let names = (f as? [Any]) ?? [f]
                verify.firmware = try names.map { try choice(Firmware.self, $0, "verify.firmware", fail) }
            }
            verify.silence = try map["silence"].map { try seconds($0, "verify.silence", fail) }
            verify.login = try map["login"].map { try string($0, "verify.login", fail) }
            if let s = map["stages"] {
                guard let stages = s as? [String: Any] else {
                    throw fail("verify.stages: expected a mapping of stage names (bootloader, kernel, init, login, or new ones)")
                }
                for name in stages.keys.sorted() {
                    guard let body = stages[name] as? [String: Any] else {
                        throw fail("verify.stages.\(name): expected pattern and/or deadline")
                    }
                    try checkKeys(body, allowed: stageKeys, at: "verify.stages.\(name).", fail: fail)
                    let pattern = try body["pattern"].map { try string($0, "verify.stages.\(name).pattern", fail) }
                    if let pattern { try checkRegex(pattern, at: "verify.stages.\(name).pattern", fail: fail) }
                    let deadline = try body["deadline"].map { try int($0, "verify.stages.\(name).deadline", fail) }
                    verify.stages.append(.init(name: name, pattern: pattern, deadline: deadline))
                }
            }
            if let r = map["run"] {
                guard let list = r as? [Any] else { throw fail("verify.run: expected a list of {command, expect}") }
                for (i, item) in list.enumerated() {
                    let at = "verify.run[\(i)]"
                    if !(item is [String: Any]) {
                        // A bare command; YAML reads `true` or `42` as non-text, which is still the command.
                        verify.run.append(.init(command: try string(item, at, fail), expect: nil))
                        continue
                    }
                    guard let body = item as? [String: Any] else { throw fail("\(at): expected a command or {command, expect}") }
                    try checkKeys(body, allowed: runKeys, at: at + ".", fail: fail)
                    guard let command = body["command"] else { throw fail("\(at): command is missing") }
                    let expect = try body["expect"].map { try string($0, "\(at).expect", fail) }
                    if let expect { try checkRegex(expect, at: "\(at).expect", fail: fail) }
                    verify.run.append(.init(command: try string(command, "\(at).command", fail), expect: expect))
                }
                if !verify.run.isEmpty, verify.login == nil { verify.login = "root" }
            }
        }
        var expect: Scenario.Expectation?
        if let e = top["expect"] {
            guard let map = e as? [String: Any] else { throw fail("expect: expected verdict and reason") }
            try checkKeys(map, allowed: expectKeys, at: "expect.", fail: fail)
            let verdict = try choice(Scenario.Expectation.Verdict.self, map["verdict"] ?? "passed", "expect.verdict", fail)
            let reason = try map["reason"].map { try string($0, "expect.reason", fail) }
            if let reason { try checkRegex(reason, at: "expect.reason", fail: fail) }
            expect = Scenario.Expectation(verdict: verdict, reason: reason)
        }
        return Scenario(
            name: name, file: file, description: try top["description"].map { try string($0, "description", fail) },
            source: source, expect: expect, tags: tags, build: build, verify: verify)
    }

    private static func checkKeys(
        _ map: [String: Any], allowed: Set<String>, at prefix: String, fail: (String) -> ScenarioError
    ) throws {
        for key in map.keys.sorted() where !allowed.contains(key) {
            let near = allowed.min { distance($0, key) < distance($1, key) }
            let hint = near.map { distance($0, key) <= 3 ? " (did you mean \($0)?)" : "" } ?? ""
            throw fail("unknown key \(prefix)\(key)\(hint); known keys: \(allowed.sorted().joined(separator: ", "))")
        }
    }

    private static func string(_ value: Any?, _ at: String, _ fail: (String) -> ScenarioError) throws -> String {
        switch value {
        case let s as String: return s
        case let b as Bool: return b ? "true" : "false"
        case let i as Int: return String(i)
        case let d as Double: return String(d)
        default: throw fail("\(at): expected text")
        }
    }

    /// One of an enum's values, or an error listing them.
    private static func choice<T: RawRepresentable & CaseIterable>(
        _: T.Type, _ value: Any?, _ at: String, _ fail: (String) -> ScenarioError
    ) throws -> T where T.RawValue == String {
        let text = try string(value, at, fail)
        guard let parsed = T(rawValue: text) else {
            throw fail("\(at): \(text) is not one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return parsed
    }

    private static func seconds(_ value: Any?, _ at: String, _ fail: (String) -> ScenarioError) throws -> Double {
        switch value {
        case let i as Int where i >= 0: return Double(i)
        case let d as Double where d >= 0: return d
        default: throw fail("\(at): expected a number of seconds, 0 or more")
        }
    }

    private static func int(_ value: Any?, _ at: String, _ fail: (String) -> ScenarioError) throws -> Int {
        guard let i = value as? Int, i > 0 else { throw fail("\(at): expected a positive whole number") }
        return i
    }

    /// Compiles a regular expression; on error, finds the first position where it goes wrong.
    static func checkRegex(_ pattern: String, at: String, fail: (String) -> ScenarioError) throws {
        guard (try? NSRegularExpression(pattern: pattern)) == nil else { return }
        // The longest prefix that some completion could still make valid tells where it broke.
        var position = 0
        let chars = Array(pattern)
        for end in stride(from: chars.count, through: 0, by: -1) {
            let prefix = String(chars[..<end])
            let completions = ["", ")", "]", "])", "}", "\\\\"]
            if completions.contains(where: { (try? NSRegularExpression(pattern: prefix + $0)) != nil }) {
                position = end
                break
            }
        }
        let marker = String(repeating: " ", count: position) + "^"
        throw fail("\(at): bad regular expression at position \(position + 1):\n  \(pattern)\n  \(marker)")
    }

    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var row = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var previous = row[0]
            row[0] = i
            for j in 1...max(b.count, 1) where !b.isEmpty {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return row[b.count]
    }
}
