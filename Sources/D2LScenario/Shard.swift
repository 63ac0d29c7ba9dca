import Foundation

/// One of N CI jobs that share a matrix: `--shard I/N`, 1-based as Playwright, Jest and node's test
/// runner spell it.
public struct Shard: Sendable, Equatable, CustomStringConvertible {
    public var index: Int
    public var count: Int

    /// Parses `I/N` with 1 <= I <= N.
    ///
    /// - Throws: `ScenarioError` for anything else.
    public init(parsing text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let index = Int(parts[0]), let count = Int(parts[1]), count >= 1, (1...count).contains(index)
        else {
            throw ScenarioError(file: "--shard", message: "'\(text)' is not I/N with 1 <= I <= N (for example 2/4)")
        }
        self.index = index
        self.count = count
    }

    public var description: String { "\(index)/\(count)" }

    /// The scenarios of this shard. Every scenario lands in exactly one shard, the same one on every
    /// machine: longest first (by `durations`, seconds per scenario file from an earlier run; unknown
    /// ones count as the average known one, or 1 s), each to the shard with the least time so far, ties
    /// to the lower shard, names breaking ties between equal durations.
    public func select(_ scenarios: [Scenario], durations: [String: Double] = [:]) -> [Scenario] {
        let known = scenarios.compactMap { durations[Self.key($0)] }
        let fallback = known.isEmpty ? 1 : known.reduce(0, +) / Double(known.count)
        let ordered = scenarios.sorted { a, b in
            let (da, db) = (durations[Self.key(a)] ?? fallback, durations[Self.key(b)] ?? fallback)
            return da != db ? da > db : a.file < b.file
        }
        var load = [Double](repeating: 0, count: count)
        var chosen: Set<String> = []
        for scenario in ordered {
            let target = load.indices.min { load[$0] != load[$1] ? load[$0] < load[$1] : $0 < $1 } ?? 0
            load[target] += durations[Self.key(scenario)] ?? fallback
            if target == index - 1 { chosen.insert(scenario.file) }
        }
        return scenarios.filter { chosen.contains($0.file) }
    }

    /// Scenario files are the unit: a file's firmware rows share its disk and its shard.
    static func key(_ scenario: Scenario) -> String { URL(fileURLWithPath: scenario.file).lastPathComponent }

    /// Seconds per scenario file from a results.json of an earlier run (the rows of one file summed).
    ///
    /// - Throws: `ScenarioError` when the file cannot be read as one.
    public static func durations(fromResults path: String) throws -> [String: Double] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ScenarioError(file: path, message: "cannot read")
        }
        struct Results: Decodable {
            struct Result: Decodable {
                var file: String
                var seconds: Double?
                var buildSeconds: Double?
                var bootSeconds: Double?
            }
            var results: [Result]
        }
        do {
            let results = try JSONDecoder().decode(Results.self, from: data).results
            var out: [String: Double] = [:]
            for r in results {
                let seconds = r.seconds ?? ((r.buildSeconds ?? 0) + (r.bootSeconds ?? 0))
                out[URL(fileURLWithPath: r.file).lastPathComponent, default: 0] = max(
                    out[URL(fileURLWithPath: r.file).lastPathComponent] ?? 0, seconds)
            }
            return out
        } catch {
            throw ScenarioError(file: path, message: "not a d2l test results.json: \(error)")
        }
    }
}
