import Foundation

/// One line of console text, cleaned, and whether the kernel printed it.
public struct ConsoleLine: Sendable, Equatable, CustomStringConvertible {
    /// The text as a terminal would show it, without escape sequences or the printk timestamp.
    public var text: String
    /// The printk timestamp (`[    2.948528] `) the line started with, in seconds since the kernel
    /// started: a kernel message. nil for userspace text (and for kernel messages on a console
    /// without timestamps).
    public var kernelTime: Double?

    public init(_ text: String, kernelTime: Double? = nil) {
        self.text = text
        self.kernelTime = kernelTime
    }

    /// Whether the line carried a printk timestamp.
    public var isKernel: Bool { kernelTime != nil }
    /// The line as printed, its printk timestamp included (`[    2.948528] text`).
    public var printed: String {
        kernelTime.map { String(format: "[%12.6f] ", $0) + text } ?? text
    }
    public var description: String { text }
}

/// Turns raw console bytes into lines fit for matching, as a terminal would show them.
///
/// A carriage return moves the cursor to the line's start and what follows overwrites it (so the
/// progress line `10%\r20%\r100%` reads `100%`); `\r\n` and `\n` end a line. Escape sequences
/// (ECMA-48: CSI, OSC and the short ones) are removed; of them only those that move the cursor along
/// the line or erase it (CUF, CUB, CHA, EL) act on the text. A sequence cut short by a control byte or
/// a byte that cannot belong to it ends there, and that byte is read again as text: an escape
/// sequence never swallows a line end or the first byte of a UTF-8 character. A kernel message
/// printed into the middle of a line (`deb[    2.948528] foo\nian login:`) is cut out into a line of
/// its own so that the line it interrupted reads whole again. The raw bytes are not kept here; the
/// transcript keeps them.
public struct ConsoleText: Sendable {
    private enum EscapeState: Sendable { case none, escape, csi, osc, oscEscape, charset }
    private var state = EscapeState.none
    private var parameters: [UInt8] = []
    private var line: [UInt8] = []
    private var cursor = 0

    public init() {}

    /// Feeds bytes; returns the lines they completed, cleaned, empty lines left out.
    public mutating func append(_ bytes: some Sequence<UInt8>) -> [ConsoleLine] {
        var completed: [ConsoleLine] = []
        for byte in bytes { feed(byte, into: &completed) }
        return completed
    }

    private mutating func feed(_ byte: UInt8, into completed: inout [ConsoleLine]) {
        switch state {
        case .escape:
            switch byte {
            case UInt8(ascii: "["):
                state = .csi
                parameters = []
                return
            case UInt8(ascii: "]"), UInt8(ascii: "P"), UInt8(ascii: "_"), UInt8(ascii: "^"):
                state = .osc
                return
            case UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "#"), UInt8(ascii: "%"):
                state = .charset
                return
            case 0x30...0x7E:
                state = .none  // a two-byte sequence (ESC 7, ESC c, ...)
                return
            default:
                state = .none  // a lone ESC: dropped, and this byte read as text
            }
        case .csi:
            switch byte {
            case 0x20...0x3F:
                parameters.append(byte)
                return
            case 0x40...0x7E:
                state = .none
                apply(final: byte)
                return
            default:
                state = .none  // cut short: the byte is text again
            }
        case .osc:
            if byte == 0x07 {
                state = .none
                return
            }
            if byte == 0x1B {
                state = .oscEscape
                return
            }
            guard byte == 0x0A || byte == 0x0D else { return }
            state = .none  // a string never spans lines: it was cut short
        case .oscEscape:
            if byte == UInt8(ascii: "\\") {
                state = .none
                return
            }
            state = .osc
            return
        case .charset:
            state = .none
            if (0x20...0x7E).contains(byte) { return }
        case .none:
            break
        }
        text(byte, into: &completed)
    }

    private mutating func text(_ byte: UInt8, into completed: inout [ConsoleLine]) {
        switch byte {
        case 0x1B:
            state = .escape
        case 0x0A:
            endLine(into: &completed)
        case 0x0D:
            cursor = 0
        case 0x09:
            put(0x20)
        case 0x08:
            cursor = max(0, cursor - 1)
        case 0x00..<0x20, 0x7F:
            break
        default:
            put(byte)
        }
    }

    /// Writes a byte at the cursor: overwrites what a carriage return moved back over.
    private mutating func put(_ byte: UInt8) {
        if cursor < line.count {
            line[cursor] = byte
        } else {
            line.append(byte)
        }
        cursor += 1
    }

    /// The cursor moves and erasures of ECMA-48 that change a line's text.
    private mutating func apply(final: UInt8) {
        let number = Int(String(decoding: parameters.prefix { (0x30...0x39).contains($0) }, as: UTF8.self))
        switch final {
        case UInt8(ascii: "K"):  // EL: 0 to the end, 1 from the start, 2 the whole line
            switch number ?? 0 {
            case 0: if cursor < line.count { line.removeSubrange(cursor...) }
            case 1: for i in 0..<min(cursor + 1, line.count) { line[i] = 0x20 }
            default: line = []
            }
        case UInt8(ascii: "G"):  // CHA
            cursor = max(0, (number ?? 1) - 1)
        case UInt8(ascii: "C"):  // CUF
            cursor += max(1, number ?? 1)
        case UInt8(ascii: "D"):  // CUB
            cursor = max(0, cursor - max(1, number ?? 1))
        default:
            return
        }
        if cursor > line.count { line += [UInt8](repeating: 0x20, count: cursor - line.count) }
    }

    /// The line being written, without any kernel message that interrupted it.
    public var partialLine: String {
        let cut = Self.printkStart(in: line, from: 1) ?? line.count
        var text = Array(line[0..<cut])
        if Self.printkStart(in: text, from: 0) == 0 { text = [] }
        return String(decoding: text, as: UTF8.self)
    }

    private mutating func endLine(into completed: inout [ConsoleLine]) {
        if let start = Self.printkStart(in: line, from: 1) {
            // A kernel message inside another line: it becomes its own line and the
            // interrupted text stays open for the bytes that continue it.
            let message = Array(line[start...])
            line = Array(line[0..<start])
            cursor = line.count
            completed.append(Self.line(of: message))
            return
        }
        let done = Self.line(of: line)
        line = []
        cursor = 0
        if !done.text.allSatisfy(\.isWhitespace) { completed.append(done) }
    }

    /// The line, with its printk timestamp taken off and kept as the kernel time.
    private static func line(of bytes: [UInt8]) -> ConsoleLine {
        if printkStart(in: bytes, from: 0) == 0, let close = bytes.firstIndex(of: UInt8(ascii: "]")) {
            let stamp = String(decoding: bytes[1..<close], as: UTF8.self).trimmingCharacters(in: .whitespaces)
            var rest = bytes[(close + 1)...]
            if rest.first == 0x20 { rest = rest.dropFirst() }
            return ConsoleLine(String(decoding: rest, as: UTF8.self), kernelTime: Double(stamp) ?? 0)
        }
        return ConsoleLine(String(decoding: bytes, as: UTF8.self))
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
