import Dispatch

/// Blocking work (file copies, libext2fs, hashing) run on a Dispatch thread, so that Swift's few
/// cooperative threads stay free for the tasks that wait on the world.
public enum BackgroundJob {
    /// Runs `work` on a Dispatch thread and awaits it; throws what the work threw, and nothing when it cannot throw.
    public static func run<T: Sendable, E: Error>(_ work: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let result: Result<T, E> = await withCheckedContinuation { continuation in
            DispatchQueue.global(qos: .userInitiated).async {
                continuation.resume(returning: Result { () throws(E) -> T in try work() })
            }
        }
        return try result.get()
    }
}
