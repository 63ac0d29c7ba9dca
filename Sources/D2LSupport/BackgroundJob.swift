import Dispatch
import Foundation

/// Work started on another thread now and waited for later; its error is rethrown by `wait`.
public final class BackgroundJob: @unchecked Sendable {
    private let group = DispatchGroup()
    private var failure: Error?

    public init(_ work: @escaping @Sendable () throws -> Void) {
        group.enter()
        DispatchQueue.global(qos: .userInitiated).async { [self] in
            defer { group.leave() }
            do { try work() } catch { failure = error }
        }
    }

    /// Waits for the work to end; throws what it threw.
    public func wait() throws {
        group.wait()
        if let failure { throw failure }
    }
}

extension BackgroundJob {
    /// Runs blocking work (subprocesses, file copies) on a Dispatch thread and awaits it, so that Swift's
    /// few cooperative threads stay free; throws what the work threw, and nothing when it cannot throw.
    public static func run<T: Sendable, E: Error>(_ work: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let result: Result<T, E> = await withCheckedContinuation { continuation in
            DispatchQueue.global(qos: .userInitiated).async {
                continuation.resume(returning: Result { () throws(E) -> T in try work() })
            }
        }
        return try result.get()
    }
}
