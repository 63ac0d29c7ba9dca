import Foundation
import Synchronization

/// Progress on stderr: a live line on a terminal, plain lines otherwise.
public final class ProgressReporter: Sendable {
    public enum Mode: Sendable { case terminal, lines, quiet }
    private let mode: Mode
    private struct Line {
        var phase = ""
        var phaseStart = Date()
        var lastDraw = Date.distantPast
        var lastLength = 0
    }
    private let line = Mutex(Line())

    public init(mode: Mode? = nil) {
        self.mode = mode ?? (isatty(2) == 1 ? .terminal : .lines)
    }

    /// Starts a named phase ("scanning layers", "writing ext4", ...).
    public func begin(_ name: String) {
        line.withLock { state in
            finishLine(&state)
            state.phase = name
            state.phaseStart = Date()
            if mode == .lines { write("d2l: \(name)\n") }
            if mode == .terminal { draw("\(name)...", &state) }
        }
    }

    /// Reports bytes done out of a total (total 0 when unknown); throttled to 10 Hz.
    public func update(bytes: UInt64, total: UInt64 = 0) {
        guard mode == .terminal else { return }
        line.withLock { state in
            let now = Date()
            guard now.timeIntervalSince(state.lastDraw) > 0.1 else { return }
            state.lastDraw = now
            let elapsed = max(now.timeIntervalSince(state.phaseStart), 0.001)
            let rate = Double(bytes) / elapsed
            var text = "\(state.phase): \(Self.format(bytes))"
            if total > 0 {
                text += " of \(Self.format(total)) (\(Int(Double(bytes) * 100 / Double(total)))%)"
            }
            text += ", \(Self.format(UInt64(rate)))/s"
            draw(text, &state)
        }
    }

    /// Prints a message on its own line (warnings, notes).
    public func note(_ message: String) {
        line.withLock { state in
            finishLine(&state)
            if mode != .quiet || message.hasPrefix("warning") { write("d2l: \(message)\n") }
        }
    }

    /// Ends the live line.
    public func done() { line.withLock { finishLine(&$0) } }

    private func draw(_ text: String, _ state: inout Line) {
        let pad = max(0, state.lastLength - text.count)
        write("\r" + text + String(repeating: " ", count: pad))
        state.lastLength = text.count
    }
    private func finishLine(_ state: inout Line) {
        if mode == .terminal, state.lastLength > 0 {
            write("\r" + String(repeating: " ", count: state.lastLength) + "\r")
            state.lastLength = 0
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
