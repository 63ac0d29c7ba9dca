/// Turns raw console bytes into lines fit for matching.
///
/// ANSI escape sequences and control characters are removed, and a kernel
/// message printed into the middle of a line (`deb[    2.948528] foo\nian login:`)
/// is cut out into a line of its own so that the line it interrupted reads whole
/// again. A kernel message's `[    2.948528] ` prefix is removed. The raw bytes
/// are not kept here; the transcript keeps them.
public struct ConsoleText: Sendable {
    private enum EscapeState: Sendable { case none, escape, csi, osc, oscEscape, charset }
    private var state = EscapeState.none
    private var line: [UInt8] = []
    private var lastWasCR = false

    public init() {}

    /// Feeds bytes; returns the lines they completed, cleaned, empty lines left out.
    public mutating func append(_ bytes: some Sequence<UInt8>) -> [String] {
        var completed: [String] = []
        for byte in bytes {
            switch state {
            case .escape:
                switch byte {
                case UInt8(ascii: "["): state = .csi
                case UInt8(ascii: "]"), UInt8(ascii: "P"), UInt8(ascii: "_"), UInt8(ascii: "^"): state = .osc
                case UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "#"), UInt8(ascii: "%"): state = .charset
                default: state = .none
                }
                continue
            case .csi:
                if (0x40...0x7E).contains(byte) { state = .none }
                continue
            case .osc:
                if byte == 0x07 { state = .none } else if byte == 0x1B { state = .oscEscape }
                continue
            case .oscEscape:
                state = byte == UInt8(ascii: "\\") ? .none : .osc
                continue
            case .charset:
                state = .none
                continue
            case .none:
                break
            }
            let wasCR = lastWasCR
            lastWasCR = byte == 0x0D
            switch byte {
            case 0x1B:
                state = .escape
            case 0x0A:
                if wasCR { continue }  // the \n of \r\n
                endLine(into: &completed)
            case 0x0D:
                endLine(into: &completed)
            case 0x09:
                line.append(0x20)
            case 0x08:
                if !line.isEmpty { line.removeLast() }
            case 0x00..<0x20, 0x7F:
                continue
            default:
                line.append(byte)
            }
        }
        return completed
    }

    /// The line being written, without any kernel message that interrupted it.
    public var partialLine: String {
        let cut = Self.printkStart(in: line, from: 1) ?? line.count
        var text = Array(line[0..<cut])
        if Self.printkStart(in: text, from: 0) == 0 { text = [] }
        return String(decoding: text, as: UTF8.self)
    }

    private mutating func endLine(into completed: inout [String]) {
        if let start = Self.printkStart(in: line, from: 1) {
            // A kernel message inside another line: it becomes its own line and the
            // interrupted text stays open for the bytes that continue it.
            let message = Array(line[start...])
            line = Array(line[0..<start])
            completed.append(Self.text(of: message))
            return
        }
        let text = Self.text(of: line)
        line = []
        if !text.allSatisfy(\.isWhitespace) { completed.append(text) }
    }

    /// The line as text, without a leading printk timestamp.
    private static func text(of bytes: [UInt8]) -> String {
        if printkStart(in: bytes, from: 0) == 0, let close = bytes.firstIndex(of: UInt8(ascii: "]")) {
            var rest = bytes[(close + 1)...]
            if rest.first == 0x20 { rest = rest.dropFirst() }
            return String(decoding: rest, as: UTF8.self)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Where a printk timestamp `[ <spaces><digits>.<digits>]` starts, at or after `from`.
    static func printkStart(in bytes: [UInt8], from: Int) -> Int? {
        var index = from
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "["), isTimestamp(bytes, at: index) { return index }
            index += 1
        }
        return nil
    }

    private static func isTimestamp(_ bytes: [UInt8], at start: Int) -> Bool {
        var index = start + 1
        while index < bytes.count, bytes[index] == 0x20 { index += 1 }
        let digitsStart = index
        while index < bytes.count, (0x30...0x39).contains(bytes[index]) { index += 1 }
        guard index > digitsStart, index < bytes.count, bytes[index] == UInt8(ascii: ".") else { return false }
        index += 1
        let fractionStart = index
        while index < bytes.count, (0x30...0x39).contains(bytes[index]) { index += 1 }
        return index > fractionStart && index < bytes.count && bytes[index] == UInt8(ascii: "]")
    }
}

/// Makes guest text safe for a terminal: no escape sequences or control characters reach it.
public enum TerminalSafe {
    public static func text(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar.value {
            case 0x09, 0x0A: out.unicodeScalars.append(scalar)
            case 0x00..<0x20, 0x7F, 0x80..<0xA0: out += "?"
            case 0x202A...0x202E, 0x2066...0x2069: out += "?"  // bidirectional overrides
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
