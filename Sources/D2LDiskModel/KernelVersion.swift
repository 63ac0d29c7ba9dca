/// A kernel release such as `6.1.0-10-amd64` or `6.8.0-rc2`, ordered as kernel versions are:
/// runs of digits compare as numbers, so `6.1.0-9` < `6.1.0-10` and `5.10` < `6.1` < `6.12`; a
/// word sorts before a number in the same place (`4.9.0-rc1` < `4.9.0-1`); and a release candidate
/// comes before the release it leads to (`6.8-rc1` < `6.8`), while anything else that continues a
/// version makes it later (`6.1` < `6.1.1`, `6.8-rc1` < `6.8-rc1-00123-gabc`).
///
/// The one ordering of kernel versions in d2l: the builder picks the newest kernel of an image
/// with it, and `d2l bisect` orders its kernels with it.
public struct KernelVersion: Sendable, Hashable, Comparable, CustomStringConvertible, Codable {
    /// The release as written (`uname -r`).
    public let text: String

    public init(_ text: String) { self.text = text }

    public var description: String { text }

    enum Piece: Hashable {
        case number(UInt64)
        case word(String)
    }

    /// The digit runs and letter runs of the text; separators (`.`, `-`, `+`, `~`, `_`) only split.
    var pieces: [Piece] {
        var out: [Piece] = []
        var digits = ""
        var letters = ""
        func flush() {
            if !digits.isEmpty { out.append(.number(UInt64(digits.suffix(18)) ?? 0)) }
            if !letters.isEmpty { out.append(.word(letters)) }
            digits = ""
            letters = ""
        }
        for character in text {
            if character.isASCII, character.isNumber {
                if !letters.isEmpty { flush() }
                digits.append(character)
            } else if character.isLetter {
                if !digits.isEmpty { flush() }
                letters.append(character)
            } else {
                flush()
            }
        }
        flush()
        return out
    }

    /// Words that mark a version before the release they lead to.
    static let prerelease: Set<String> = ["rc", "pre", "alpha", "beta"]

    public static func < (a: KernelVersion, b: KernelVersion) -> Bool {
        let left = a.pieces
        let right = b.pieces
        for (x, y) in zip(left, right) where x != y {
            switch (x, y) {
            case (.number(let m), .number(let n)): return m < n
            case (.word, .number): return true
            case (.number, .word): return false
            case (.word(let s), .word(let t)): return s < t
            }
        }
        if left.count == right.count { return a.text < b.text }
        // One is the other continued: a release candidate is earlier, anything else later.
        let shorterIsLeft = left.count < right.count
        let next = shorterIsLeft ? right[left.count] : left[right.count]
        let continuationIsEarlier: Bool
        if case .word(let word) = next { continuationIsEarlier = prerelease.contains(word.lowercased()) } else {
            continuationIsEarlier = false
        }
        return shorterIsLeft != continuationIsEarlier
    }
}
