/// The console of one boot as a sequence of timed events, with the transcript and recent lines kept.
///
/// Used from a single task: it merges the guest's bytes with a periodic tick so
/// that deadlines are checked even while the guest is silent.
final class ConsoleSession {
    enum Event {
        case lines([String], partial: String)
        case tick
        case closed(error: (any Error)?)
    }

    let console: any GuestConsole
    let powerOn: ContinuousClock.Instant
    private(set) var transcript: [UInt8] = []
    private(set) var recentLines: [String] = []
    private var text = ConsoleText()
    private let events: AsyncStream<RawEvent>
    private var iterator: AsyncStream<RawEvent>.Iterator
    private var producers: [Task<Void, Never>] = []
    private var closed = false

    private enum RawEvent: Sendable {
        case bytes([UInt8])
        case tick
        case closed(error: (any Error)?)
    }

    init(console: any GuestConsole, powerOn: ContinuousClock.Instant, tick: Duration = .milliseconds(100)) {
        self.console = console
        self.powerOn = powerOn
        let (stream, continuation) = AsyncStream.makeStream(of: RawEvent.self)
        events = stream
        iterator = stream.makeAsyncIterator()
        producers.append(
            Task {
                do {
                    for try await chunk in console.output { continuation.yield(.bytes(chunk)) }
                    continuation.yield(.closed(error: nil))
                } catch {
                    continuation.yield(.closed(error: error))
                }
            })
        producers.append(
            Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: tick)
                    continuation.yield(.tick)
                }
            })
    }

    deinit { stop() }

    /// Stops the producers; the console itself is the caller's to destroy.
    func stop() {
        for task in producers { task.cancel() }
        producers = []
    }

    /// Time since power-on.
    var now: Duration { ContinuousClock.now - powerOn }

    private var unread: [String] = []

    /// Gives back lines a reader did not use; the next call to `next()` returns them first.
    func unread(_ lines: some Collection<String>) {
        unread = Array(lines) + unread
    }

    /// The next event; after the console closed, ticks only.
    func next() async -> Event {
        if !unread.isEmpty {
            defer { unread = [] }
            return .lines(unread, partial: text.partialLine)
        }
        guard let raw = await iterator.next() else { return .closed(error: nil) }
        switch raw {
        case .bytes(let bytes):
            transcript += bytes
            let lines = text.append(bytes)
            recentLines += lines
            if recentLines.count > 200 { recentLines.removeFirst(recentLines.count - 100) }
            return .lines(lines, partial: text.partialLine)
        case .tick:
            return .tick
        case .closed(let error):
            closed = true
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
