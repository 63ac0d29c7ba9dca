import D2LSupport
import D2LVerify
import Foundation

/// Renders matrix results: a summary table, JUnit XML, JSON, and an offline HTML report.
public struct MatrixReport: Sendable {
    public var results: [ScenarioResult]
    public var seconds: Double

    public init(results: [ScenarioResult], seconds: Double) {
        self.results = results
        self.seconds = seconds
    }

    public var counts: (passed: Int, failed: Int, flaky: Int, skipped: Int, errors: Int) {
        (
            results.filter { $0.verdict == .passed }.count, results.filter { $0.verdict == .failed }.count,
            results.filter { $0.verdict == .flaky }.count, results.filter { $0.verdict == .skipped }.count,
            results.filter { $0.verdict == .error }.count
        )
    }

    static let stageOrder = ["firmware", "bootloader", "kernel", "init", "login"]

    /// The table printed at the end of `d2l test`.
    public func table() -> String {
        let stageNames = orderedStageNames()
        var rows: [[String]] = [["scenario", "build"] + stageNames + ["kernel", "verdict"]]
        for r in results {
            var row = [r.name, r.buildSeconds.map { String(format: "%.1fs", $0) } ?? "-"]
            for name in stageNames {
                let stage = r.stages.first { $0.name == name }
                row.append(stage?.reached == true ? stage?.seconds.map { String(format: "%.1fs", $0) } ?? "ok" : (stage == nil ? "-" : "x"))
            }
            row.append(r.kernelVersion ?? "-")
            row.append(r.verdict.rawValue + (r.verdict == .skipped ? " (\(r.reason ?? ""))" : ""))
            rows.append(row)
        }
        let widths = rows[0].indices.map { i in rows.map { $0[i].count }.max() ?? 0 }
        let lines = rows.map { row in
            row.enumerated().map { i, cell in cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
        let c = counts
        // Hosts that failed are the infrastructure's, not the boots': listed apart, after the verdicts.
        let infrastructure = results.flatMap { r in r.infrastructureErrors.map { "  \(r.name): \($0)" } }
        return (lines + [
            "", "\(c.passed + c.flaky) passed, \(c.failed + c.errors) failed, \(c.skipped) skipped"
                + (c.flaky > 0 ? " (\(c.flaky) flaky)" : "") + String(format: " in %.1f s", seconds),
        ] + (infrastructure.isEmpty ? [] : ["\(infrastructure.count) infrastructure error(s), boots moved to another host:"] + infrastructure)
        ).joined(separator: "\n")
    }

    private func orderedStageNames() -> [String] {
        var names = Self.stageOrder.filter { n in results.contains { $0.stages.contains { $0.name == n } } }
        for r in results {
            for s in r.stages where !names.contains(s.name) { names.append(s.name) }
        }
        return names.isEmpty ? Self.stageOrder : names
    }

    /// What results.json holds: the counts, and every result with all it needs to rebuild the reports.
    struct Document: Codable {
        var seconds: Double
        var passed: Int
        var failed: Int
        var flaky: Int
        var skipped: Int
        var results: [ScenarioResult]
    }

    /// The results of several runs (CI shards) as one report: their results in the order given, and
    /// the longest run's time (shards run side by side).
    ///
    /// - Throws: `ScenarioError` naming a directory without a readable results.json.
    public static func merge(directories: [String]) throws -> MatrixReport {
        var results: [ScenarioResult] = []
        var seconds = 0.0
        for directory in directories {
            let file = (directory as NSString).appendingPathComponent("results.json")
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ScenarioError(file: file, message: "no results.json: give the --output folder of a d2l test run")
            }
            do {
                let document = try JSONDecoder().decode(Document.self, from: data)
                results += document.results
                seconds = max(seconds, document.seconds)
            } catch {
                throw ScenarioError(file: file, message: "not a d2l test results.json: \(error)")
            }
        }
        return MatrixReport(results: results, seconds: seconds)
    }

    /// - Throws: `EncodingError` (not expected: every field encodes).
    public func json() throws -> String {
        let c = counts
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let doc = Document(
            seconds: seconds, passed: c.passed, failed: c.failed + c.errors, flaky: c.flaky, skipped: c.skipped,
            results: results)
        return String(decoding: try encoder.encode(doc), as: UTF8.self)
    }

    /// One test case per scenario and stage, so CI shows where a boot stopped.
    public func junit() -> String {
        var cases: [String] = []
        var failures = 0
        var skipped = 0
        for r in results {
            let cls = xml("d2l.\(r.name)")
            if r.verdict == .skipped {
                skipped += 1
                cases.append("    <testcase classname=\"\(cls)\" name=\"boot\"><skipped message=\"\(xml(r.reason ?? ""))\"/></testcase>")
                continue
            }
            if let b = r.buildSeconds {
                let failed = r.stages.isEmpty && (r.verdict == .failed || r.verdict == .error)
                if failed { failures += 1 }
                cases.append(
                    "    <testcase classname=\"\(cls)\" name=\"build\" time=\"\(String(format: "%.3f", b))\">"
                        + (failed ? "<failure message=\"\(xml(r.reason ?? "build failed"))\"/>" : "") + "</testcase>")
            }
            var previous = 0.0
            for stage in r.stages {
                let t = max(0, (stage.seconds ?? previous) - previous)
                previous = stage.seconds ?? previous
                var body = ""
                // A scenario that expected its boot to fail, and saw it fail, passes at every stage.
                if !stage.reached, r.verdict == .failed || r.verdict == .error {
                    failures += 1
                    body = "<failure message=\"\(xml(stage.failure ?? r.reason ?? "not reached"))\">"
                        + xml(r.lastLines.joined(separator: "\n")) + "</failure>"
                }
                cases.append(
                    "    <testcase classname=\"\(cls)\" name=\"\(xml(stage.name))\" time=\"\(String(format: "%.3f", t))\">\(body)</testcase>")
            }
            if !r.infrastructureErrors.isEmpty {
                // Not a failure of the boot: the hosts that failed under it, for the record.
                cases.append(
                    "    <testcase classname=\"\(cls)\" name=\"host\"><system-out>\(xml(r.infrastructureErrors.joined(separator: "\n")))"
                        + (r.host.map { xml("\nbooted on \($0)") } ?? "") + "</system-out></testcase>")
            }
            if r.verdict == .error, !r.stages.isEmpty || r.buildSeconds == nil {
                failures += 1
                cases.append("    <testcase classname=\"\(cls)\" name=\"verify\"><error message=\"\(xml(r.reason ?? ""))\"/></testcase>")
            }
        }
        return """
            <?xml version="1.0" encoding="UTF-8"?>
            <testsuites name="d2l test" tests="\(cases.count)" failures="\(failures)" skipped="\(skipped)" time="\(String(format: "%.3f", seconds))">
              <testsuite name="scenarios" tests="\(cases.count)" failures="\(failures)" skipped="\(skipped)">
            \(cases.joined(separator: "\n"))
              </testsuite>
            </testsuites>

            """
    }

    /// A self-contained page: one timeline per scenario on a shared time axis, verdicts, transcript links.
    public func html(relativeTo directory: String) -> String {
        let colors = ["firmware": "#c9c9c9", "bootloader": "#8e7cc3", "kernel": "#6fa8dc", "init": "#f6b26b", "login": "#93c47d"]
        let axis = max(10, results.compactMap { r in r.stages.compactMap(\.seconds).max() }.max() ?? 10)
        let width = 720.0
        var rows = ""
        for r in results {
            var svg = ""
            var previous = 0.0
            for stage in r.stages {
                guard let t = stage.seconds, stage.reached else { continue }
                let x = previous / axis * width
                let w = max(1, (t - previous) / axis * width)
                svg += "<rect x=\"\(fmt(x))\" y=\"4\" width=\"\(fmt(w))\" height=\"18\" fill=\"\(colors[stage.name] ?? "#b7b7b7")\">"
                    + "<title>\(xml(stage.name)): \(String(format: "%.1f", previous))–\(String(format: "%.1f", t)) s</title></rect>"
                if w > 40 {
                    svg += "<text x=\"\(fmt(x + 4))\" y=\"17\" font-size=\"11\">\(xml(stage.name))</text>"
                }
                previous = t
            }
            if r.verdict == .failed || r.verdict == .error, let failed = r.stages.first(where: { !$0.reached }) {
                let x = previous / axis * width
                svg += "<rect x=\"\(fmt(x))\" y=\"4\" width=\"6\" height=\"18\" fill=\"#cc0000\"><title>\(xml(failed.name)) failed: \(xml(failed.failure ?? r.reason ?? ""))</title></rect>"
            }
            let transcript = r.transcript.map { path -> String in
                let rel = path.hasPrefix(directory + "/") ? String(path.dropFirst(directory.count + 1)) : path
                return FileManager.default.fileExists(atPath: path) ? "<a href=\"\(xml(rel))\">transcript</a>" : ""
            } ?? ""
            rows += """
                <tr class="\(r.verdict.rawValue)"><td>\(xml(r.name))</td><td class="v">\(r.verdict.rawValue)</td>
                <td><svg width="\(Int(width))" height="26">\(svg)</svg></td>
                <td>\(xml(r.kernelVersion ?? ""))</td><td>\(r.buildSeconds.map { String(format: "%.1f s", $0) } ?? "")</td>
                <td>\(xml(r.reason ?? ""))</td><td>\(transcript)</td></tr>
                <tr class="detail"><td></td><td colspan="6">\(details(r))</td></tr>

                """
        }
        var ticks = ""
        let step = axis > 120 ? 30.0 : (axis > 40 ? 10.0 : 5.0)
        var t = 0.0
        while t <= axis {
            ticks += "<line x1=\"\(fmt(t / axis * width))\" y1=\"0\" x2=\"\(fmt(t / axis * width))\" y2=\"6\" stroke=\"#555\"/>"
                + "<text x=\"\(fmt(t / axis * width + 2))\" y=\"16\" font-size=\"10\">\(Int(t))s</text>"
            t += step
        }
        let c = counts
        let legend = Self.stageOrder.map { "<span style=\"background:\(colors[$0] ?? "")\">&nbsp;\($0)&nbsp;</span>" }.joined(separator: " ")
        return """
            <!DOCTYPE html>
            <html><head><meta charset="utf-8"><title>d2l test report</title>
            <style>
            body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}
            tr.passed .v{color:#38761d} tr.flaky .v{color:#b45f06} tr.failed .v,tr.error .v{color:#cc0000;font-weight:bold} tr.skipped .v{color:#777}
            tr.detail td{border-bottom:2px solid #bbb;font-size:90%} pre{background:#f4f4f4;padding:6px;max-height:24em;overflow:auto;white-space:pre-wrap}
            .bad{color:#cc0000} .warn{color:#b45f06} table.inner td,table.inner th{border:none;padding:1px 8px}
            </style></head><body>
            <h1>d2l test</h1>
            <p>\(c.passed + c.flaky) passed, \(c.failed + c.errors) failed, \(c.skipped) skipped\(c.flaky > 0 ? " (\(c.flaky) flaky)" : "") in \(String(format: "%.1f", seconds)) s. Stages: \(legend)</p>
            <table><tr><th>scenario</th><th>verdict</th><th>boot timeline (seconds since power-on)<br><svg width="\(Int(width))" height="18">\(ticks)</svg></th><th>kernel</th><th>build</th><th>reason</th><th></th></tr>
            \(rows)</table></body></html>

            """
    }

    /// A scenario's stages, commands, warnings and, for a failure, the lines that decided it and the
    /// console's last lines: folded away under a summary line.
    private func details(_ r: ScenarioResult) -> String {
        var parts: [String] = []
        if !r.stages.isEmpty {
            var table = "<table class=\"inner\"><tr><th>stage</th><th>at</th><th></th></tr>"
            for stage in r.stages {
                let at = stage.seconds.map { String(format: "%.1f s", $0) } ?? ""
                let what = stage.failure.map { "<b class=\"bad\">\(xml($0))</b>" }
                    ?? (stage.reached ? (stage.seconds == nil ? "not seen on the console; a later stage proves it" : "reached") : "not reached")
                table += "<tr><td>\(xml(stage.name))</td><td>\(at)</td><td>\(what)</td></tr>"
            }
            parts.append(table + "</table>")
        }
        for command in r.commands {
            let status = command.exitStatus.map(String.init) ?? "none"
            parts.append(
                "<p><code>\(xml(command.command))</code>: exit \(status), "
                    + (command.passed ? "passed" : "<b class=\"bad\">failed</b>") + "</p><pre>\(xml(command.output))</pre>")
        }
        if let host = r.host { parts.append("<p>booted on <code>\(xml(host))</code></p>") }
        for error in r.infrastructureErrors {
            parts.append("<p class=\"warn\">infrastructure error (not the boot's; it moved to another host): \(xml(error))</p>")
        }
        for warning in r.warnings {
            parts.append("<p class=\"warn\">warning: \(xml(warning.summary))</p><pre>\(xml(warning.lines.joined(separator: "\n")))</pre>")
        }
        if !r.failureLines.isEmpty, r.verdict == .failed || r.verdict == .error {
            parts.append("<p>the lines that decided it:</p><pre>\(xml(r.failureLines.joined(separator: "\n")))</pre>")
        }
        if !r.lastLines.isEmpty {
            parts.append("<p>the console's last lines:</p><pre>\(xml(r.lastLines.suffix(25).joined(separator: "\n")))</pre>")
        }
        guard !parts.isEmpty else { return "" }
        let summary = "\(r.stages.filter(\.reached).count) stages, \(r.commands.count) commands, \(r.warnings.count) warnings"
        let open = r.verdict == .failed || r.verdict == .error ? " open" : ""
        return "<details\(open)><summary>\(summary)</summary>\(parts.joined())</details>"
    }

    private func fmt(_ v: Double) -> String { String(format: "%.1f", v) }

    private func xml(_ s: String) -> String {
        // XML 1.0 forbids most control characters: drop them (guest consoles print escapes).
        XMLText.escape(String(s.unicodeScalars.filter { $0.value >= 0x20 || $0 == "\n" || $0 == "\t" }.map(Character.init)))
    }
}
