import Foundation

/// Progress on stderr: a live line on a terminal, plain lines otherwise.
public final class ProgressReporter: @unchecked Sendable {
    public enum Mode: Sendable { case terminal, lines, quiet }
    private let mode: Mode
    private let lock = NSLock()
    private var phase = ""
    private var phaseStart = Date()
    private var lastDraw = Date.distantPast
    private var lastLength = 0

    public init(mode: Mode? = nil) {
        self.mode = mode ?? (isatty(2) == 1 ? .terminal : .lines)
    }

    /// Starts a named phase ("scanning layers", "writing ext4", ...).
    public func begin(_ name: String) {
        lock.withLock {
            finishLine()
            phase = name
            phaseStart = Date()
            if mode == .lines { write("d2l: \(name)\n") }
            if mode == .terminal { draw("\(name)...") }
        }
    }

    /// Reports bytes done out of a total (total 0 when unknown); throttled to 10 Hz.
    public func update(bytes: UInt64, total: UInt64 = 0) {
        guard mode == .terminal else { return }
        lock.withLock {
            let now = Date()
            guard now.timeIntervalSince(lastDraw) > 0.1 else { return }
            lastDraw = now
            let elapsed = max(now.timeIntervalSince(phaseStart), 0.001)
            let rate = Double(bytes) / elapsed
            var text = "\(phase): \(Self.format(bytes))"
            if total > 0 {
                text += " of \(Self.format(total)) (\(Int(Double(bytes) * 100 / Double(total)))%)"
            }
            text += ", \(Self.format(UInt64(rate)))/s"
            draw(text)
        }
    }

    /// Prints a message on its own line (warnings, notes).
    public func note(_ message: String) {
        lock.withLock {
            finishLine()
            if mode != .quiet || message.hasPrefix("warning") { write("d2l: \(message)\n") }
        }
    }

    /// Ends the live line.
    public func done() { lock.withLock { finishLine() } }

    private func draw(_ text: String) {
        let pad = max(0, lastLength - text.count)
        write("\r" + text + String(repeating: " ", count: pad))
        lastLength = text.count
    }
    private func finishLine() {
        if mode == .terminal, lastLength > 0 {
            write("\r" + String(repeating: " ", count: lastLength) + "\r")
            lastLength = 0
        }
    }
    private func write(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) }

    /// 1536 -> "1.5 KiB".
    public static func format(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024, unit < units.count - 1 { value /= 1024; unit += 1 }
        return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
    }
}
