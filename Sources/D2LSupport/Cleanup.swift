import Foundation
import Synchronization

/// Paths to delete when the process ends early, and the handlers that do it.
///
/// A build writes to temporary files beside its output; on SIGINT, SIGTERM or SIGHUP they are
/// removed before the process exits (with 128 + the signal), so nothing partial is left. SIGKILL
/// cannot be caught: for it, `startReaper` leaves the paths to a small process that removes them
/// when this one is gone, after killing the processes registered with `addProcess` (a QEMU that
/// libvirt's embedded driver started, which would otherwise outlive d2l).
public final class Cleanup: Sendable {
    public static let shared = Cleanup()

    private struct State {
        var paths: [String] = []
        /// `PID:STARTTIME` of the processes the reaper kills.
        var processes: [String] = []
        var actions: [Int: @Sendable () -> Void] = [:]
        var nextAction = 0
        var sources: [any DispatchSourceSignal] = []
        /// This process's end of the socket the reaper reads, or -1.
        var reaper: Int32 = -1
    }
    private let state = Mutex(State())
    /// True once the process is exiting: nothing more that needs undoing may be made.
    private let exiting = Mutex(false)

    /// True once a signal's cleanup has begun: what it undoes (a destroyed domain, a removed file)
    /// is no outcome of the work, and the handler ends the process with 128+signal.
    public var isExiting: Bool { exiting.withLock { $0 } }

    /// The process is exiting (a signal's cleanup has begun): `registering` makes nothing more.
    public struct Exiting: Error, CustomStringConvertible {
        public var description: String { "d2l is exiting" }
    }

    /// Registers a path to remove (file or directory) on an early exit.
    public func add(_ path: String) {
        state.withLock {
            $0.paths.append(path)
            Self.tell($0.reaper, "+", path)
        }
    }

    /// Forgets a path: it was removed or renamed into place.
    public func remove(_ path: String) {
        state.withLock {
            $0.paths.removeAll { $0 == path }
            Self.tell($0.reaper, "-", path)
        }
    }

    /// Registers a process for the reaper to kill (SIGKILL) if this one ends without `removeProcess`:
    /// by its pid, and only while that pid is still the same process (its start time in
    /// /proc/PID/stat, proc(5) field 22, is compared first, so a reused pid is left alone).
    public func addProcess(_ pid: pid_t) {
        guard let entry = Self.processEntry(pid) else { return }
        state.withLock {
            $0.processes.append(entry)
            Self.tell($0.reaper, "!", entry)
        }
    }

    /// Forgets a process: it was stopped, or is left to its own end.
    public func removeProcess(_ pid: pid_t) {
        state.withLock { state in
            let prefix = "\(pid):"
            for entry in state.processes where entry.hasPrefix(prefix) { Self.tell(state.reaper, "~", entry) }
            state.processes.removeAll { $0.hasPrefix(prefix) }
        }
    }

    /// `PID:STARTTIME` from /proc/PID/stat (the fields after the command's closing parenthesis).
    static func processEntry(_ pid: pid_t) -> String? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.range(of: ") ", options: .backwards)
        else { return nil }
        let fields = stat[close.upperBound...].split(separator: " ")
        // Field 22 (starttime) is the 20th after the command (fields 1 and 2).
        guard fields.count >= 20 else { return nil }
        return "\(pid):\(fields[19])"
    }

    /// Makes something that must be undone on an early exit (a libvirt domain) and registers its
    /// undoing, as one step a signal cannot split: a signal's cleanup waits for a `create` under way
    /// and then undoes it too, and once the cleanup has begun nothing more is made.
    ///
    /// - Returns: what `create` made, and the token to pass to `removeAction` once it is undone.
    /// - Throws: what `create` throws, or `Exiting` when the process is already exiting.
    public func registering<T: Sendable>(
        _ create: () throws -> T, undo: @escaping @Sendable (T) -> Void
    ) throws -> (value: T, token: Int) {
        try exiting.withLock { exiting throws -> (value: T, token: Int) in
            if exiting { throw Exiting() }
            let value = try create()
            return (value, addAction { undo(value) })
        }
    }

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

    /// Starts the reaper: a shell in its own session that learns every path `add`ed and `remove`d
    /// through a socket and, when the socket closes (this process ended, however: SIGKILL and the OOM
    /// killer included), removes the paths still registered. After a clean exit there are none left.
    /// Does nothing the second time, or where /bin/sh cannot be started.
    public func startReaper() {
        state.withLock { state in
            guard state.reaper < 0 else { return }
            var ends: [Int32] = [-1, -1]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
                return
            }
            defer { close(ends[1]) }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_adddup2(&actions, ends[1], 0)
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
            var attributes = posix_spawnattr_t()
            posix_spawnattr_init(&attributes)
            defer { posix_spawnattr_destroy(&attributes) }
            // Its own session, so that a signal to d2l's process group (Ctrl-C, a supervisor's kill)
            // does not end it first; the default action for the signals d2l ignores.
            var defaults = sigset_t()
            sigemptyset(&defaults)
            for sig in [SIGINT, SIGTERM, SIGHUP, SIGPIPE] { sigaddset(&defaults, sig) }
            posix_spawnattr_setsigdefault(&attributes, &defaults)
            // POSIX_SPAWN_SETSID (0x80, glibc 2.26) is a _GNU_SOURCE macro Swift does not see.
            posix_spawnattr_setflags(&attributes, Int16(0x80 | POSIX_SPAWN_SETSIGDEF))
            let words: [String] = ["sh", "-c", Self.reaperScript, "d2l-reaper"]
            let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
            defer { for arg in argv { free(arg) } }
            var pid: pid_t = 0
            guard posix_spawn(&pid, "/bin/sh", &actions, &attributes, argv, environ) == 0 else {
                close(ends[0])
                return
            }
            state.reaper = ends[0]
            for path in state.paths { Self.tell(ends[0], "+", path) }
            for entry in state.processes { Self.tell(ends[0], "!", entry) }
        }
    }

    /// The reaper: the paths live in the positional parameters (`set -f`: no globbing of names), the
    /// processes (`PID:STARTTIME`) in `procs`. At the end it kills each process still the same one
    /// (its start time unchanged), then removes the paths.
    private static let reaperScript = """
        set -f
        procs=""
        while IFS= read -r line; do
          case $line in
            +*) set -- "$@" "${line#+}" ;;
            -*) p=${line#-}; n=$#; for a do [ "$a" = "$p" ] || set -- "$@" "$a"; done; shift "$n" ;;
            !*) procs="$procs ${line#!}" ;;
            ~*) p=${line#~}; kept=""; for q in $procs; do [ "$q" = "$p" ] || kept="$kept $q"; done; procs=$kept ;;
          esac
        done
        for q in $procs; do
          pid=${q%%:*}
          IFS= read -r stat < "/proc/$pid/stat" 2>/dev/null || continue
          now=$(printf '%s\n' "${stat##*) }" | cut -d' ' -f20)
          [ "$now" = "${q#*:}" ] && kill -9 "$pid" 2>/dev/null
        done
        [ "$#" -eq 0 ] || exec rm -rf -- "$@"
        """

    /// Tells the reaper of one path; a name with a newline cannot be told, and is left to the signal handlers.
    private static func tell(_ socket: Int32, _ operation: String, _ path: String) {
        guard socket >= 0, !path.contains("\n") else { return }
        let line = Array((operation + path + "\n").utf8)
        _ = line.withUnsafeBytes { send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Runs the registered actions and deletes the registered paths.
    public func runAll() {
        exiting.withLock { $0 = true }
        // Actions last registered first, as `defer` runs: a domain is destroyed before the disk it
        // was given (an uploaded volume) is deleted.
        let (paths, actions) = state.withLock { state in
            (state.paths, state.actions.sorted { $0.key > $1.key }.map(\.value))
        }
        // Children first, so that none is still writing into what the actions and paths remove; each
        // gets a moment to clean up after itself (a d2l verify destroys its domain).
        ChildProcesses.shared.stopAll()
        for action in actions { action() }
        for path in paths { try? FileManager.default.removeItem(atPath: path) }
    }
}
