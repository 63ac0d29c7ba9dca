import Foundation

/// A compiled regular expression that can cross task boundaries.
public struct ConsolePattern: @unchecked Sendable, CustomStringConvertible {
    public let source: String
    // NSRegularExpression is immutable and documented thread-safe.
    private let regex: NSRegularExpression

    /// - Throws: `VerifyError.badOption` when `source` is not a regular expression.
    public init(_ source: String) throws(VerifyError) {
        do {
            regex = try NSRegularExpression(pattern: source)
        } catch {
            throw .badOption("'\(source)' is not a valid regular expression")
        }
        self.source = source
    }

    /// A pattern written in this module; tests compile every one of them.
    init(builtIn source: String) {
        guard let regex = try? NSRegularExpression(pattern: source) else {
            preconditionFailure("built-in pattern does not compile: \(source)")
        }
        self.regex = regex
        self.source = source
    }

    public var description: String { source }

    /// A pattern ending in `$` may match a prompt that no newline has ended yet.
    public var matchesPrompt: Bool { source.hasSuffix("$") && !source.hasSuffix("\\$") }

    /// The first match's captures (index 0 is the whole match), or nil.
    public func firstMatch(in text: String) -> [String]? {
        let range = NSRange(text.startIndex..., in: text)
        guard let match = regex.firstMatch(in: text, range: range) else { return nil }
        return (0..<match.numberOfRanges).map { index in
            let captured = match.range(at: index)
            guard captured.location != NSNotFound, let swiftRange = Range(captured, in: text) else { return "" }
            return String(text[swiftRange])
        }
    }
}
