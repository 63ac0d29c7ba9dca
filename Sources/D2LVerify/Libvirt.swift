import CLibvirt
import CThreadAffinity
import D2LSupport
import Foundation
import Synchronization

/// A libvirt call that failed, with libvirt's own message.
public struct LibvirtError: Error, CustomStringConvertible, Sendable, CategorizedError {
    public let operation: String
    public let message: String
    public var description: String { "libvirt: \(operation) failed: \(message)" }
    public var category: ErrorCategory { .couldNotTest }

    /// Captures libvirt's last error for the calling thread.
    static func last(_ operation: String) -> LibvirtError {
        let text = virGetLastErrorMessage().map { String(cString: $0) } ?? "unknown error"
        return LibvirtError(operation: operation, message: text)
    }

    /// Throws libvirt's last error when `result` is negative.
    @discardableResult
    static func check(_ result: Int32, _ operation: String) throws -> Int32 {
        if result < 0 { throw last(operation) }
        return result
    }
}

/// A per-process embedded root, removed when the process exits.
private let privateEmbeddedRoot = Mutex("")
private func removePrivateEmbeddedRoot() {
    let root = privateEmbeddedRoot.withLock { $0 }
    if !root.isEmpty { try? FileManager.default.removeItem(atPath: root) }
}

/// libvirt's default event loop, registered once and run on its own thread.
enum LibvirtEventLoop {
    private static let started: Bool = {
        // libvirt prints every error on stderr unless told otherwise; we report them ourselves.
        virSetErrorFunc(nil) { _, _ in }
        guard virEventRegisterDefaultImpl() == 0 else { return false }
        let thread = Thread {
            while true { _ = virEventRunDefaultImpl() }
        }
        thread.name = "libvirt-events"
        thread.start()
        return true
    }()

    static func start() throws {
        guard started else { throw LibvirtError.last("virEventRegisterDefaultImpl") }
    }
}

/// A connection to a libvirt driver; one per URI per process (the embedded driver allows only one).
///
/// `@unchecked Sendable`: it holds only an immutable libvirt handle, and libvirt's connections may be
/// used from several threads at once (libvirt's "Thread safety" guide).
public final class LibvirtConnection: @unchecked Sendable {
    let pointer: virConnectPtr
    public let uri: String
    /// The URI really opened: `uri`, or for an embedded driver whose root another process held, the
    /// private root beside it.
    let openedURI: String

    private static let connections = Mutex<[String: LibvirtConnection]>([:])

    /// Why the connection closed under d2l (a daemon that died, a network that dropped), once it has.
    private let lostReason = Mutex<String?>(nil)

    private init(pointer: virConnectPtr, uri: String, openedURI: String) {
        self.pointer = pointer
        self.uri = uri
        self.openedURI = openedURI
    }

    /// Why the connection was lost, nil while it holds: set by libvirt's close callback (EOF, error,
    /// or keepalive: a peer that stops answering for 15 s).
    public var lost: String? { lostReason.withLock { $0 } }

    /// Watches a daemon connection: keepalive every 5 s (3 unanswered: closed) and a close callback.
    private func watch() {
        guard Self.embeddedRoot(of: openedURI) == nil else { return }
        _ = virConnectSetKeepAlive(pointer, 5, 3)
        let context = Unmanaged.passRetained(self).toOpaque()
        let registered = virConnectRegisterCloseCallback(
            pointer,
            { _, reason, opaque in
                let connection = Unmanaged<LibvirtConnection>.fromOpaque(opaque!).takeUnretainedValue()
                let why: String
                switch UInt32(reason) {
                case VIR_CONNECT_CLOSE_REASON_EOF.rawValue: why = "the daemon closed it (end of file)"
                case VIR_CONNECT_CLOSE_REASON_KEEPALIVE.rawValue: why = "the daemon stopped answering (keepalive)"
                case VIR_CONNECT_CLOSE_REASON_ERROR.rawValue: why = "a network or protocol error"
                default: why = "closed by the client"
                }
                connection.lostReason.withLock { $0 = $0 ?? why }
            }, context, nil)
        // Never released: connections live as long as the process (`shared`).
        if registered != 0 { Unmanaged<LibvirtConnection>.fromOpaque(context).release() }
    }
    deinit { virConnectClose(pointer) }

    /// The process-wide connection to `uri`, opened on first use.
    ///
    /// An embedded driver's root belongs to one process at a time; when another
    /// `d2l verify` holds it, this one uses a private root beside it, removed at exit.
    ///
    /// - Throws: `LibvirtError` with libvirt's message when the connection cannot be opened.
    public static func shared(uri: String) throws -> LibvirtConnection {
        try connections.withLock { connections in
            if let existing = connections[uri] { return existing }
            var target = uri
            // A failed open leaves the process without an embedded driver for good, so look before leaping.
            if let root = embeddedRoot(of: uri), isHeldByAnotherProcess(root: root) {
                let privateRoot = root + "-\(getpid())"
                Cleanup.shared.add(privateRoot)
                privateEmbeddedRoot.withLock { $0 = privateRoot }
                atexit(removePrivateEmbeddedRoot)
                target = "qemu:///embed?root=" + privateRoot
            }
            let connection = try connect(target, asked: uri)
            connection.undefineStaleDomains()
            connection.watch()
            connections[uri] = connection
            return connection
        }
    }

    /// True when another process's embedded driver holds the lock on `root` (libvirt's driver.pid).
    static func isHeldByAnotherProcess(root: String) -> Bool {
        let path = root + "/run/qemu/driver.pid"
        let fd = open(path, O_RDWR)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var lock = flock()
        lock.l_type = Int16(F_WRLCK)
        lock.l_whence = Int16(SEEK_SET)
        return fcntl(fd, F_GETLK, &lock) == 0 && lock.l_type != Int16(F_UNLCK)
    }

    private static func connect(_ uri: String, asked: String) throws -> LibvirtConnection {
        if let root = embeddedRoot(of: uri) { try prepareEmbeddedRoot(root) }
        try LibvirtEventLoop.start()
        guard let pointer = FirstCPU.pinning({ virConnectOpen(uri) }) else {
            var error = LibvirtError.last("connecting to \(uri)")
            if error.message.contains("Failed to parse user") {
                // As root the driver insists that its compiled-in user exists, even when qemu.conf overrides it.
                error = LibvirtError(
                    operation: error.operation,
                    message: error.message + " (as root libvirt's QEMU driver needs that user: "
                        + "apt-get install libvirt-daemon-system, or groupadd --system libvirt-qemu && "
                        + "useradd --system -g libvirt-qemu libvirt-qemu)")
            }
            throw error
        }
        return LibvirtConnection(pointer: pointer, uri: asked, openedURI: uri)
    }

    /// Defines a persistent (inactive) domain.
    ///
    /// - Throws: `LibvirtError` with libvirt's message.
    func define(xml: String) throws -> LibvirtDomain {
        guard let defined = virDomainDefineXML(pointer, xml) else { throw LibvirtError.last("defining the domain") }
        return LibvirtDomain(pointer: defined, connection: self)
    }

    /// The pid of a running domain's QEMU under the embedded driver (its `run/qemu/NAME.pid`); nil
    /// under a daemon, whose QEMU is the daemon's to stop.
    public func qemuPID(domainName: String) -> pid_t? {
        guard let root = Self.embeddedRoot(of: openedURI),
            let text = try? String(contentsOfFile: root + "/run/qemu/\(domainName).pid", encoding: .utf8)
        else { return nil }
        return pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Undefines what a d2l killed (SIGKILL) between defining its domain and making it transient left
    /// in a shared embedded root: inactive persistent domains named `d2l-verify[-KIND]-PID-...` whose
    /// d2l process is gone. Domains of live processes, and every other domain, are left alone.
    func undefineStaleDomains() {
        guard Self.embeddedRoot(of: openedURI) != nil else { return }
        var list: UnsafeMutablePointer<virDomainPtr?>?
        let flags = UInt32(VIR_CONNECT_LIST_DOMAINS_INACTIVE.rawValue | VIR_CONNECT_LIST_DOMAINS_PERSISTENT.rawValue)
        let count = virConnectListAllDomains(pointer, &list, flags)
        guard count > 0 else { return }
        defer { free(list) }
        for index in 0..<Int(count) {
            guard let domain = list?[index] else { continue }
            defer { virDomainFree(domain) }
            guard let name = virDomainGetName(domain).map({ String(cString: $0) }),
                let owner = MachineSpec.ownerPID(ofDomainNamed: name), kill(owner, 0) != 0, errno == ESRCH
            else { continue }
            _ = virDomainUndefineFlags(domain, UInt32(VIR_DOMAIN_UNDEFINE_NVRAM.rawValue))
        }
    }

    /// Gives the embedded driver a configuration that works without libvirt's users and daemons.
    private static func prepareEmbeddedRoot(_ root: String) throws {
        let files = FileManager.default
        let qemu = try QEMUIdentity.forThisProcess()
        // QEMU reads its domain's files (the master key) under the root: as another user it must be
        // able to pass through the root and every directory d2l makes above it (whatever the umask).
        if qemu.isOtherThanSelf {
            var directory = ""
            for component in root.split(separator: "/") {
                directory += "/" + component
                if mkdir(directory, 0o755) == 0 { chmod(directory, 0o755) }
            }
            chmod(root, 0o755)
        }
        let reachable: [FileAttributeKey: Any]? = qemu.isOtherThanSelf ? [.posixPermissions: 0o755] : nil
        try files.createDirectory(atPath: root + "/etc", withIntermediateDirectories: true, attributes: reachable)
        try files.createDirectory(atPath: root + "/log", withIntermediateDirectories: true, attributes: reachable)
        // QEMU runs as QEMUIdentity says (never root); libvirt never chowns or relabels anything: the
        // image reaches QEMU as a read-only descriptor, and its writable files are made for it (DomainScratch).
        let config = root + "/etc/qemu.conf"
        do {
            let text = """
                # Written by d2l verify for libvirt's embedded QEMU driver.
                user = "+\(qemu.uid)"
                group = "+\(qemu.gid)"
                dynamic_ownership = 0
                remember_owner = 0
                security_driver = "none"
                # QEMU's own stderr goes to a file: virtlogd is a daemon, and none runs.
                stdio_handler = "file"

                """
            if (try? String(contentsOfFile: config, encoding: .utf8)) != text {
                try text.write(toFile: config, atomically: true, encoding: .utf8)
            }
        }
        // libvirt logs its errors on stderr as well; we report them ourselves.
        setenv("LIBVIRT_LOG_OUTPUTS", "3:file:\(root)/log/libvirt.log", 0)
    }

    /// The root directory of a `qemu:///embed?root=DIR` URI.
    static func embeddedRoot(of uri: String) -> String? {
        guard uri.hasPrefix("qemu:///embed"), let range = uri.range(of: "root=") else { return nil }
        let rest = uri[range.upperBound...]
        return String(rest.prefix { $0 != "&" }).removingPercentEncoding
    }

    /// True for `qemu:///embed` connections, whose QEMU configuration d2l writes.
    public var isEmbedded: Bool { Self.embeddedRoot(of: uri) != nil }

    /// The host a URI names (`qemu+ssh://root@HOST/system`), nil for this machine's drivers
    /// (`qemu:///system`, `qemu:///embed?...`): a daemon there cannot open this machine's files.
    public static func remoteHost(of uri: String) -> String? {
        guard let host = URLComponents(string: uri)?.host, !host.isEmpty else { return nil }
        return host
    }

    /// Creates and starts a transient domain, paused so that no console output is lost.
    ///
    /// `descriptors` maps fd group names used in the XML (`<source file='…' fdgroup='NAME'/>`) to open
    /// file descriptors, which QEMU then gets instead of opening the path (virDomainFDAssociate, libvirt
    /// 9.0). Descriptors need a defined domain, so then the domain is defined, given them, started and
    /// undefined at once: from then on it is transient, as one made by virDomainCreateXML. The caller
    /// keeps ownership of the descriptors (QEMU has its own copies once this returns).
    ///
    /// - Throws: `LibvirtError` with libvirt's message.
    public func createPausedDomain(xml: String, descriptors: [String: Int32] = [:]) throws -> LibvirtDomain {
        // A daemon destroys an autodestroy domain when this connection closes, however d2l ends (a
        // SIGKILL, a dropped network); the embedded driver's QEMU is left to Cleanup's reaper instead.
        let flags = UInt32(VIR_DOMAIN_START_PAUSED.rawValue) | (isEmbedded ? 0 : UInt32(VIR_DOMAIN_START_AUTODESTROY.rawValue))
        guard !descriptors.isEmpty else {
            guard let domain = virDomainCreateXML(pointer, xml, flags) else {
                throw LibvirtError.last("creating the domain")
            }
            return LibvirtDomain(pointer: domain, connection: self)
        }
        let domain = try define(xml: xml)
        let defined = domain.pointer
        let undefine = UInt32(VIR_DOMAIN_UNDEFINE_KEEP_NVRAM.rawValue)
        do {
            for (group, fd) in descriptors.sorted(by: { $0.key < $1.key }) {
                var fds = [fd]
                try LibvirtError.check(
                    virDomainFDAssociate(defined, group, 1, &fds, 0), "passing the image's descriptor to the domain")
            }
            try LibvirtError.check(virDomainCreateWithFlags(defined, flags), "creating the domain")
        } catch {
            _ = virDomainUndefineFlags(defined, undefine)
            throw error
        }
        if virDomainUndefineFlags(defined, undefine) != 0 {
            let error = LibvirtError.last("making the domain transient")
            domain.destroy()
            throw error
        }
        return domain
    }

    /// Looks up a domain by name; nil when it does not exist.
    public func domain(named name: String) -> LibvirtDomain? {
        guard let domain = virDomainLookupByName(pointer, name) else { return nil }
        return LibvirtDomain(pointer: domain, connection: self)
    }

    /// Names of the running domains.
    ///
    /// - Throws: `LibvirtError` with libvirt's message.
    public func runningDomainNames() throws -> [String] {
        var list: UnsafeMutablePointer<virDomainPtr?>?
        let count = try LibvirtError.check(
            virConnectListAllDomains(pointer, &list, UInt32(VIR_CONNECT_LIST_DOMAINS_ACTIVE.rawValue)),
            "listing domains")
        defer { free(list) }
        var names: [String] = []
        for index in 0..<Int(count) {
            guard let domain = list?[index] else { continue }
            if let name = virDomainGetName(domain) { names.append(String(cString: name)) }
            virDomainFree(domain)
        }
        return names
    }

    fileprivate func newStream() throws -> virStreamPtr {
        guard let stream = virStreamNew(pointer, UInt32(VIR_STREAM_NONBLOCK.rawValue)) else {
            throw LibvirtError.last("creating a console stream")
        }
        return stream
    }
}

/// A libvirt domain handle (`@unchecked Sendable` as the connection: an immutable thread-safe handle).
public final class LibvirtDomain: @unchecked Sendable {
    fileprivate let pointer: virDomainPtr
    private let connection: LibvirtConnection
    private let destroyed = Mutex(false)

    fileprivate init(pointer: virDomainPtr, connection: LibvirtConnection) {
        self.pointer = pointer
        self.connection = connection
    }
    deinit { virDomainFree(pointer) }

    /// Why the connection this domain lives on was lost, nil while it holds.
    public var connectionLost: String? { connection.lost }

    public var name: String { virDomainGetName(pointer).map { String(cString: $0) } ?? "?" }

    /// Opens the serial console as a non-blocking stream.
    ///
    /// - Throws: `LibvirtError` with libvirt's message.
    public func openConsole() throws -> ConsoleStream {
        let stream = try connection.newStream()
        let flags = UInt32(VIR_DOMAIN_CONSOLE_FORCE.rawValue)
        guard virDomainOpenConsole(pointer, nil, stream, flags) == 0 else {
            let error = LibvirtError.last("opening the serial console")
            virStreamFree(stream)
            throw error
        }
        return try ConsoleStream(pointer: stream)
    }

    /// - Throws: `LibvirtError` with libvirt's message.
    public func resume() throws { try LibvirtError.check(virDomainResume(pointer), "resuming the domain") }

    /// Removes an inactive persistent domain's definition (and its NVRAM); false when libvirt refused.
    @discardableResult
    func undefine() -> Bool { virDomainUndefineFlags(pointer, UInt32(VIR_DOMAIN_UNDEFINE_NVRAM.rawValue)) == 0 }

    /// True while the domain exists and has not shut off.
    public var isActive: Bool { virDomainIsActive(pointer) == 1 }

    /// Stops the domain at once; safe to call more than once and from any thread.
    public func destroy() {
        let first = destroyed.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        if virDomainDestroy(pointer) != 0, virDomainIsActive(pointer) == 1 {
            // A second try covers QEMU being busy with the first request.
            _ = virDomainDestroyFlags(pointer, UInt32(VIR_DOMAIN_DESTROY_DEFAULT.rawValue))
        }
    }
}

/// A non-blocking console stream whose bytes arrive through libvirt's event loop
/// (`@unchecked Sendable` as the connection: an immutable thread-safe handle).
public final class ConsoleStream: @unchecked Sendable {
    private let pointer: virStreamPtr
    private let finished = Mutex(false)
    private let continuation: AsyncThrowingStream<[UInt8], any Error>.Continuation
    /// Bytes from the guest, in order; ends when the guest's console closes.
    public let output: AsyncThrowingStream<[UInt8], any Error>

    fileprivate init(pointer: virStreamPtr) throws {
        self.pointer = pointer
        (output, continuation) = AsyncThrowingStream.makeStream(of: [UInt8].self)
        let events = Int32(VIR_STREAM_EVENT_READABLE.rawValue | VIR_STREAM_EVENT_ERROR.rawValue
            | VIR_STREAM_EVENT_HANGUP.rawValue)
        let opaque = Unmanaged.passRetained(self).toOpaque()
        let result = virStreamEventAddCallback(
            pointer, events,
            { _, _, opaque in
                guard let opaque else { return }
                Unmanaged<ConsoleStream>.fromOpaque(opaque).takeUnretainedValue().drain()
            },
            opaque,
            { opaque in
                guard let opaque else { return }
                Unmanaged<ConsoleStream>.fromOpaque(opaque).release()
            })
        if result != 0 {
            Unmanaged<ConsoleStream>.fromOpaque(opaque).release()
            throw LibvirtError.last("watching the console stream")
        }
    }
    deinit { virStreamFree(pointer) }

    /// Reads everything available; runs on the event loop thread.
    private func drain() {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = buffer.withUnsafeMutableBytes {
                virStreamRecv(pointer, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count)
            }
            switch count {
            case -2:
                return  // would block: wait for the next event
            case 0:
                end(error: nil, finish: true)  // the guest's side closed: QEMU ended
                return
            case ..<0:
                end(error: LibvirtError.last("reading the console"), finish: false)
                return
            default:
                continuation.yield(Array(buffer[0..<Int(count)]))
            }
        }
    }

    /// Removes the callback (left registered it would fire again and again) and finishes the stream.
    private func end(error: (any Error)?, finish: Bool) {
        let first = finished.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        virStreamEventRemoveCallback(pointer)
        if finish { virStreamFinish(pointer) } else { virStreamAbort(pointer) }
        continuation.finish(throwing: error)
    }

    /// Writes bytes to the guest's serial port, waiting briefly while the stream is full.
    ///
    /// - Throws: `LibvirtError` when the stream fails or stays full for 5 s.
    public func send(_ bytes: [UInt8]) throws {
        var offset = 0
        var attempts = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes {
                virStreamSend(pointer, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count)
            }
            if sent == -2 {
                attempts += 1
                guard attempts < 500 else { throw LibvirtError(operation: "writing to the console", message: "stream stayed full") }
                usleep(10_000)
                continue
            }
            try LibvirtError.check(sent, "writing to the console")
            offset += Int(sent)
        }
    }

    /// Stops watching the stream; the output sequence ends.
    public func close() {
        end(error: nil, finish: false)
    }
}

/// Runs work on the first CPU this process may use, then gives the calling thread back its CPUs.
///
/// libvirt's QEMU driver reads the host's CPUID when it starts and throws its cached QEMU
/// capabilities away when they were saved under other CPUID answers ("host cpuid changed" in its
/// debug log), then probes QEMU again: 4-6 s under TCG. On this project's machines, whose KVM is
/// present but broken, the answers depend on the CPU that asks (its APIC ID), so a driver that
/// starts on another CPU than the one before re-probes: on 2 CPUs, every other run of d2l. Starting
/// the embedded driver on the same CPU each time keeps the cache valid. QEMU itself is unaffected:
/// libvirt gives each QEMU all the host's CPUs.
enum FirstCPU {
    static func pinning<T>(_ work: () throws -> T) rethrows -> T {
        var saved = [UInt8](repeating: 0, count: Int(D2L_CPU_MASK_BYTES))
        guard d2l_pin_thread_to_first_cpu(&saved) == 0 else { return try work() }
        defer { _ = d2l_restore_thread_cpus(saved) }
        return try work()
    }
}
