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
