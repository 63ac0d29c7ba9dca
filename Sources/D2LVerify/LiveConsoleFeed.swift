import Synchronization

/// A live console as events: bytes as they arrive, merged with a tick every `tick` of wall-clock time.
final class LiveConsoleFeed: Sendable {
    private let events: AsyncStream<ConsoleEvent>
    private let producers: [Task<Void, Never>]
    nonisolated(unsafe) private var iterator: AsyncStream<ConsoleEvent>.Iterator
    private let ended = Mutex(false)

    init(output: AsyncThrowingStream<[UInt8], any Error>, tick: Duration = .milliseconds(100)) {
        let (stream, continuation) = AsyncStream.makeStream(of: ConsoleEvent.self)
        events = stream
        iterator = stream.makeAsyncIterator()
        producers = [
            Task {
                do {
                    for try await chunk in output { continuation.yield(.bytes(chunk)) }
                    continuation.yield(.closed(error: nil))
                } catch {
                    continuation.yield(.closed(error: error))
                }
            },
            Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: tick)
                    continuation.yield(.tick)
                }
            },
        ]
    }

    deinit { stop() }

    /// Called by the console's single reader.
    func next() async -> ConsoleEvent {
        if ended.withLock({ $0 }) { return .closed(error: nil) }
        guard let event = await iterator.next() else { return .closed(error: nil) }
        if case .closed = event { ended.withLock { $0 = true } }
        return event
    }

    func stop() { for task in producers { task.cancel() } }
}
