/// The console of one boot as a sequence of timed events, with the transcript and recent lines kept.
///
/// Used from a single task. Its time is read from a `Stopwatch` on the hypervisor's clock: the wall
/// clock for a real guest, the transcript's own time for a replay (so replayed boots are judged on
/// the times they were recorded with, however fast they replay).
final class ConsoleSession {
    enum Event {
        case lines([String], partial: String)
        case tick
        case closed(error: (any Error)?)
    }

    let console: any GuestConsole
    private let stopwatch: Stopwatch
    private(set) var transcript: [UInt8] = []
    private(set) var recentLines: [String] = []
    private var text = ConsoleText()
    private var unread: [String] = []

    init(console: any GuestConsole, stopwatch: Stopwatch) {
        self.console = console
        self.stopwatch = stopwatch
    }

    /// Time since power-on.
    var now: Duration { stopwatch.elapsed }

    /// Gives back lines a reader did not use; the next call to `next()` returns them first.
    func unread(_ lines: some Collection<String>) {
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
            let lines = text.append(bytes)
            recentLines += lines
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
}
