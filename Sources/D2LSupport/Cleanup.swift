import Foundation

/// Paths to delete when the process ends early, and the handlers that do it.
///
/// A build writes to temporary files beside its output; on SIGINT or SIGTERM
/// they are removed before the process exits, so nothing partial is left.
public final class Cleanup: @unchecked Sendable {
    public static let shared = Cleanup()
    private let lock = NSLock()
    private var paths: [String] = []
    private var actions: [Int: @Sendable () -> Void] = [:]
    private var nextAction = 0
    private var sources: [DispatchSourceSignal] = []

    /// Registers a path to remove (file or directory) on an early exit.
    public func add(_ path: String) { lock.withLock { paths.append(path) } }
    /// Forgets a path: it was removed or renamed into place.
    public func remove(_ path: String) { lock.withLock { paths.removeAll { $0 == path } } }

    /// Registers an action to run on an early exit; returns a token for `removeAction`.
    public func addAction(_ action: @escaping @Sendable () -> Void) -> Int {
        lock.withLock {
            nextAction += 1
            actions[nextAction] = action
            return nextAction
        }
    }
    public func removeAction(_ token: Int) { lock.withLock { _ = actions.removeValue(forKey: token) } }

    /// Installs SIGINT/SIGTERM/SIGHUP handlers that clean up and exit with 128+signal.
    public func installSignalHandlers() {
        lock.withLock {
            guard sources.isEmpty else { return }
            for sig in [SIGINT, SIGTERM, SIGHUP] {
                signal(sig, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                source.setEventHandler { [weak self] in
                    self?.runAll()
                    FileHandle.standardError.write(Data("\nd2l: interrupted, cleaned up\n".utf8))
                    _exit(128 + sig)
                }
                source.resume()
                sources.append(source)
            }
        }
    }

    /// Runs the registered actions and deletes the registered paths.
    public func runAll() {
        let (todo, acts) = lock.withLock { (paths, Array(actions.values)) }
        // Children first, so that none is still writing into what the actions and paths remove.
        ChildProcesses.shared.terminateAll()
        for action in acts { action() }
        for path in todo { try? FileManager.default.removeItem(atPath: path) }
    }
}
