/// An os-release file (`/etc/os-release`, else `/usr/lib/os-release`), as os-release(5) describes it:
/// `KEY=value` lines, values optionally in single or double quotes, `#` comments.
public struct OSRelease: Sendable, Equatable, Codable {
    /// Every key and its unquoted value.
    public var fields: [String: String]

    public init(fields: [String: String] = [:]) { self.fields = fields }

    /// Parses the file's bytes; lines that are not `KEY=value` are skipped.
    public init(parsing bytes: some Sequence<UInt8>) {
        var out: [String: String] = [:]
        for line in String(decoding: Array(bytes), as: UTF8.self).split(separator: "\n") {
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            guard !trimmed.hasPrefix("#"), let eq = trimmed.firstIndex(of: "=") else { continue }
            var value = String(trimmed[trimmed.index(after: eq)...])
            if value.count >= 2, let quote = value.first, quote == "\"" || quote == "'", value.last == quote {
                value = String(value.dropFirst().dropLast())
            }
            out[String(trimmed[..<eq])] = value
        }
        fields = out
    }

    /// The places os-release(5) names, in the order they are read.
    public static let paths = ["etc/os-release", "usr/lib/os-release"]

    public var prettyName: String? { fields["PRETTY_NAME"] }
    public var id: String? { fields["ID"] }
    public var versionID: String? { fields["VERSION_ID"] }

    /// PRETTY_NAME, else ID and VERSION_ID ("debian 12"), else "".
    public var name: String {
        prettyName ?? [id, versionID].compactMap { $0 }.joined(separator: " ")
    }
}
