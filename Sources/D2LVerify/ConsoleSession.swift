import D2LSupport
import Foundation

/// The console of one boot as a sequence of timed events, with the transcript and recent lines kept.
///
/// Used from a single task. Its time is read from a `Stopwatch` on the hypervisor's clock: the wall
/// clock for a real guest, the transcript's own time for a replay (so replayed boots are judged on
/// the times they were recorded with, however fast they replay).
final class ConsoleSession {
    enum Event {
        case lines([ConsoleLine], partial: String)
        case tick
        case closed(error: (any Error)?)
    }

    let console: any GuestConsole
    private let stopwatch: Stopwatch
    private(set) var transcript: [UInt8] = []
    /// When each chunk of the transcript arrived: its time since power-on and its size.
    private(set) var timing: [(at: Duration, bytes: Int)] = []
    private(set) var recentLines: [String] = []
    private var text = ConsoleText()
    private var unread: [ConsoleLine] = []

    init(console: any GuestConsole, stopwatch: Stopwatch) {
        self.console = console
        self.stopwatch = stopwatch
    }

    /// Time since power-on.
    var now: Duration { stopwatch.elapsed }

    /// Gives back lines a reader did not use; the next call to `next()` returns them first.
    func unread(_ lines: some Collection<ConsoleLine>) {
        unread = Array(lines) + unread
    }

    /// The next event.
    func next() async -> Event {
        if !unread.isEmpty {
            defer { unread = [] }
            return .lines(unread, partial: text.partialLine)
        }
        switch await console.next() {
        case .bytes(let bytes):
            transcript += bytes
            timing.append((now, bytes.count))
            let lines = text.append(bytes)
            recentLines += lines.map(\.text)
            if recentLines.count > 200 { recentLines.removeFirst(recentLines.count - 100) }
            return .lines(lines, partial: text.partialLine)
        case .tick:
            return .tick
        case .closed(let error):
            return .closed(error: error)
        }
    }

    /// The last `count` lines, the unfinished one included.
    func lastLines(_ count: Int) -> [String] {
        let partial = text.partialLine
        let all = partial.isEmpty ? recentLines : recentLines + [partial]
        return Array(all.suffix(count))
    }

    func type(_ text: String) throws {
        try console.send(Array(text.utf8))
    }

    /// The transcript's timing in scriptreplay(1)'s classic format: a line per chunk, `<seconds since
    /// the previous chunk> <bytes>`, so that `scriptreplay FILE.timing FILE` and `d2l verify --replay`
    /// play the console back as it came.
    var timingFile: String {
        var previous = Duration.zero
        var out = ""
        for (at, count) in timing {
            out += String(format: "%.6f %d\n", (at - previous).seconds, count)
            previous = at
        }
        return out
    }
}
