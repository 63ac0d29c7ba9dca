import D2LSupport
import Foundation

/// The real thing: a transient libvirt domain.
public struct LibvirtHypervisor: Hypervisor {
    public let connection: LibvirtConnection
    /// The storage pool a daemon on another host gets the disk in (`RemoteUploads`).
    public var storagePool: String
    /// Hears what the hypervisor does besides booting: an upload, where it went.
    public var note: @Sendable (String) -> Void

    /// - Throws: `VerifyError.badOption` for `qemu:///session` as root (see `rootSessionProblem`),
    ///   `LibvirtError` when the connection cannot be opened.
    public init(uri: String, storagePool: String = "default", note: @escaping @Sendable (String) -> Void = { _ in }) throws {
        if let problem = Self.rootSessionProblem(uri: uri, euid: geteuid()) { throw VerifyError.badOption(problem) }
        connection = try LibvirtConnection.shared(uri: uri)
        self.storagePool = storagePool
        self.note = note
    }

    /// `qemu:///embed?root=<cache>/libvirt`, or a short directory under /tmp when that path is too long
    /// for the sockets libvirt creates under it (108 bytes). As root it is /var/cache/d2l/libvirt: QEMU
    /// runs as `libvirt-qemu` and must reach its domain's files there, which it cannot under /root.
    public static func defaultURI(
        environment: [String: String] = ProcessInfo.processInfo.environment, asRoot: Bool = geteuid() == 0
    ) -> String {
        if let uri = environment["D2L_LIBVIRT_URI"], !uri.isEmpty { return uri }
        if asRoot { return "qemu:///embed?root=/var/cache/d2l/libvirt" }
        var root = URL(fileURLWithPath: CacheDirectory.path).appendingPathComponent("libvirt").standardizedFileURL.path
        // The longest socket is about <root>/run/libvirt/qemu/domain-N-<20 chars>/monitor.sock + slack.
        if root.utf8.count > 40 { root = "/tmp/d2l-\(getuid())" }
        return "qemu:///embed?root=\(root)"
    }

    /// Why `uri` cannot be used by user `euid`: a session daemon runs QEMU as its own user, so
    /// `qemu:///session` as root would run the guest's QEMU as root (libvirt's drvqemu.html: "session"
    /// instances run with the privileges of the user who started them). The embedded driver (the
    /// default) and `qemu:///system` run it as an unprivileged user instead.
    static func rootSessionProblem(uri: String, euid: uid_t) -> String? {
        guard euid == 0, let url = URLComponents(string: uri), url.scheme?.hasPrefix("qemu") == true,
            url.host?.isEmpty ?? true, url.path == "/session"
        else { return nil }
        return "--connect \(uri) as root would run QEMU as root: use the default embedded driver "
            + "(QEMU runs as libvirt-qemu) or qemu:///system, or run d2l as an ordinary user"
    }

    public var stopwatch: Stopwatch { Stopwatch(clock: ContinuousClock()) }
    public var answersInput: Bool { true }

    /// Creates the domain paused, opens its console, then lets it run.
    ///
    /// Under the embedded driver QEMU gets the image as a read-only descriptor and writes only to its
    /// own `DomainScratch` (overlay, NVRAM, kernel copies), as the unprivileged user `QEMUIdentity` names;
    /// under a libvirt daemon the disk is libvirt's transient disk and the NVRAM goes to d2l's cache;
    /// under a daemon on another host, the disk is first placed in its storage pool (`RemoteUploads`)
    /// and libvirt keeps the NVRAM there.
    ///
    /// - Throws: `LibvirtError` when the domain cannot be created, its console opened or it resumed;
    ///   `VerifyError.hypervisor` when OVMF is missing, the image cannot be opened or the scratch
    ///   directory cannot be made.
    public func powerOn(_ machine: MachineSpec) async throws -> any GuestConsole {
        if let missing = machine.uefiFiles?.missing { throw VerifyError.hypervisor(missing) }
        var machine = machine
        var scratch: DomainScratch?
        var descriptors: [String: Int32] = [:]
        defer { for fd in descriptors.values { close(fd) } }
        do {
            if connection.isEmbedded {
                let prepared = try await Self.prepare(&machine)
                scratch = prepared.scratch
                descriptors = prepared.descriptors
            } else if LibvirtConnection.remoteHost(of: connection.uri) != nil {
                guard machine.directBoot == nil else {
                    throw VerifyError.badOption(
                        "--kernel with a daemon on another host: the kernel and initrd would have to be on that host; "
                            + "boot the disk's own kernel there, or the --kernel here")
                }
                let placed = try RemoteUploads.shared.place(
                    machine.diskPath, format: machine.diskFormat, pool: storagePool, on: connection, note: note)
                machine.diskPath = placed.path
            } else if machine.uefiFiles != nil {
                // A throwaway NVRAM per boot: libvirt makes it from the template; it goes with the domain.
                let directory = CacheDirectory.path + "/nvram"
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                machine.nvramPath = directory + "/\(machine.name).fd"
            }
        } catch {
            scratch?.remove()
            throw error
        }
        var leftovers = Leftovers(nvram: scratch == nil ? machine.nvramPath : nil, scratch: scratch)
        if let nvram = leftovers.nvram { Cleanup.shared.add(nvram) }
        let domain: LibvirtDomain
        let token: Int
        do {
            // From its creation on the domain must die on every way out, signals included.
            let xml = machine.domainXML
            let passed = descriptors
            (domain, token) = try Cleanup.shared.registering(
                { try connection.createPausedDomain(xml: xml, descriptors: passed) }, undo: { $0.destroy() })
        } catch {
            leftovers.remove()
            throw error
        }
        // Should d2l be killed outright, the reaper kills this QEMU (the embedded driver's QEMU outlives it).
        leftovers.qemu = connection.qemuPID(domainName: machine.name)
        if let pid = leftovers.qemu { Cleanup.shared.addProcess(pid) }
        do {
            let stream = try domain.openConsole()
            try domain.resume()
            return LibvirtGuest(domain: domain, stream: stream, cleanupToken: token, leftovers: leftovers)
        } catch {
            domain.destroy()
            Cleanup.shared.removeAction(token)
            leftovers.remove()
            throw error
        }
    }

    /// Makes the boot's scratch directory and points the machine at it: the overlay over the image's
    /// descriptor, the NVRAM from OVMF's template and, when QEMU runs as another user, copies of a
    /// direct boot's kernel and initrd (QEMU as d2l's own user reads them where they are).
    private static func prepare(_ machine: inout MachineSpec) async throws -> (scratch: DomainScratch, descriptors: [String: Int32]) {
        let image = URL(fileURLWithPath: machine.diskPath).standardizedFileURL.path
        let fd = open(image, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw VerifyError.hypervisor("cannot open \(image): \(String(cString: strerror(errno)))")
        }
        var scratch: DomainScratch?
        do {
            let made = try DomainScratch.create(for: machine.name, owner: try QEMUIdentity.forThisProcess())
            scratch = made
            let overlay = try await made.makeOverlay(backing: image, format: machine.diskFormat.qemuFormat)
            machine.diskAttachment = .descriptorBacked(overlay: overlay, fdGroup: "image")
            if let files = machine.uefiFiles {
                machine.nvramPath = try made.copy(files.varsTemplate, as: "nvram.fd")
            }
            if var direct = machine.directBoot, made.owner.isOtherThanSelf {
                direct.kernel = try made.copy(direct.kernel, as: "kernel")
                if let initrd = direct.initrd { direct.initrd = try made.copy(initrd, as: "initrd") }
                machine.directBoot = direct
            }
            return (made, ["image": fd])
        } catch {
            close(fd)
            scratch?.remove()
            throw error
        }
    }
}

/// What a boot leaves on the host until it ends: its scratch directory, or a daemon boot's NVRAM file.
struct Leftovers: Sendable {
    var nvram: String?
    var scratch: DomainScratch?
    /// The embedded driver's QEMU, registered with Cleanup's reaper while the domain runs.
    var qemu: pid_t?

    func remove() {
        if let qemu { Cleanup.shared.removeProcess(qemu) }
        if let nvram {
            try? FileManager.default.removeItem(atPath: nvram)
            Cleanup.shared.remove(nvram)
        }
        scratch?.remove()
    }
}

/// A libvirt domain's serial console, with a tick every 100 ms of wall-clock time.
final class LibvirtGuest: GuestConsole, Sendable {
    let domain: LibvirtDomain
    let stream: ConsoleStream
    let cleanupToken: Int
    let leftovers: Leftovers
    private let feed: LiveConsoleFeed

    init(domain: LibvirtDomain, stream: ConsoleStream, cleanupToken: Int, leftovers: Leftovers) {
        self.domain = domain
        self.stream = stream
        self.cleanupToken = cleanupToken
        self.leftovers = leftovers
        feed = LiveConsoleFeed(output: stream.output)
    }

    func next() async -> ConsoleEvent {
        let event = await feed.next()
        // A signal's cleanup destroyed the domain: no verdict may come of that (it would say the
        // guest stopped). The handler ends the process; this boot waits for it, never resumed.
        if Cleanup.shared.isExiting { await withUnsafeContinuation { (_: UnsafeContinuation<Void, Never>) in } }
        // A daemon's console just goes quiet when its connection drops: that is no guest's doing.
        if let lost = domain.connectionLost {
            return .closed(error: VerifyError.hypervisor("the connection to the libvirt daemon was lost: \(lost)"))
        }
        return event
    }
    func send(_ bytes: [UInt8]) throws { try stream.send(bytes) }
    func destroy() {
        feed.stop()
        stream.close()
        domain.destroy()
        Cleanup.shared.removeAction(cleanupToken)
        leftovers.remove()
    }
}

