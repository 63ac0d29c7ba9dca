import Foundation
import Synchronization

/// Paths to delete when the process ends early, and the handlers that do it.
///
/// A build writes to temporary files beside its output; on SIGINT, SIGTERM or SIGHUP they are
/// removed before the process exits (with 128 + the signal), so nothing partial is left.
public final class Cleanup: Sendable {
    public static let shared = Cleanup()

    private struct State {
        var paths: [String] = []
        var actions: [Int: @Sendable () -> Void] = [:]
        var nextAction = 0
        var sources: [any DispatchSourceSignal] = []
    }
    private let state = Mutex(State())

    /// Registers a path to remove (file or directory) on an early exit.
    public func add(_ path: String) { state.withLock { $0.paths.append(path) } }
    /// Forgets a path: it was removed or renamed into place.
    public func remove(_ path: String) { state.withLock { $0.paths.removeAll { $0 == path } } }

    /// Registers an action to run on an early exit; returns a token for `removeAction`.
    public func addAction(_ action: @escaping @Sendable () -> Void) -> Int {
        state.withLock {
            $0.nextAction += 1
            $0.actions[$0.nextAction] = action
            return $0.nextAction
        }
    }
    public func removeAction(_ token: Int) { state.withLock { _ = $0.actions.removeValue(forKey: token) } }

    /// Installs SIGINT/SIGTERM/SIGHUP handlers that clean up and exit with 128+signal.
    public func installSignalHandlers() {
        state.withLock { state in
            guard state.sources.isEmpty else { return }
            for sig in [SIGINT, SIGTERM, SIGHUP] {
                signal(sig, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                source.setEventHandler { [weak self] in
                    self?.runAll()
                    FileHandle.standardError.write(Data("\nd2l: interrupted, cleaned up\n".utf8))
                    _exit(128 + sig)
                }
                source.resume()
                state.sources.append(source)
            }
        }
    }

    /// Runs the registered actions and deletes the registered paths.
    public func runAll() {
        let (paths, actions) = state.withLock { ($0.paths, Array($0.actions.values)) }
        // Children first, so that none is still writing into what the actions and paths remove.
        ChildProcesses.shared.killAll()
        for action in actions { action() }
        for path in paths { try? FileManager.default.removeItem(atPath: path) }
    }
}
