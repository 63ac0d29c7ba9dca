import D2LSupport
import Foundation

/// The real thing: a transient libvirt domain.
public struct LibvirtHypervisor: Hypervisor {
    public let connection: LibvirtConnection

    /// - Throws: `LibvirtError` when the connection cannot be opened.
    public init(uri: String) throws {
        connection = try LibvirtConnection.shared(uri: uri)
    }

    /// `qemu:///embed?root=<cache>/libvirt`, or a short directory under /tmp when that path is too long
    /// for the sockets libvirt creates under it (108 bytes).
    public static func defaultURI(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let uri = environment["D2L_LIBVIRT_URI"], !uri.isEmpty { return uri }
        var root = URL(fileURLWithPath: CacheDirectory.path).appendingPathComponent("libvirt").standardizedFileURL.path
        // The longest socket is about <root>/run/libvirt/qemu/domain-N-<20 chars>/monitor.sock + slack.
        if root.utf8.count > 40 { root = "/tmp/d2l-\(getuid())" }
        return "qemu:///embed?root=\(root)"
    }

    public var stopwatch: Stopwatch { Stopwatch(clock: ContinuousClock()) }
    public var answersInput: Bool { true }

    /// - Throws: `LibvirtError` when the domain cannot be created, its console opened or it resumed.
    public func powerOn(_ machine: MachineSpec) async throws -> any GuestConsole {
        var machine = machine
        if let files = machine.uefiFiles {
            if let missing = files.missing { throw VerifyError.hypervisor(missing) }
            // A throwaway NVRAM per boot: libvirt makes it from the template; it goes with the domain.
            let directory = CacheDirectory.path + "/nvram"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            machine.nvramPath = directory + "/\(machine.name).fd"
        }
        let nvram = machine.nvramPath
        if let nvram { Cleanup.shared.add(nvram) }
        let domain: LibvirtDomain
        let token: Int
        do {
            // From its creation on the domain must die on every way out, signals included.
            (domain, token) = try Cleanup.shared.registering(
                { try connection.createPausedDomain(xml: machine.domainXML) }, undo: { $0.destroy() })
        } catch {
            if let nvram { Self.remove(nvram) }
            throw error
        }
        do {
            let stream = try domain.openConsole()
            try domain.resume()
            return LibvirtGuest(domain: domain, stream: stream, cleanupToken: token, nvram: nvram)
        } catch {
            domain.destroy()
            Cleanup.shared.removeAction(token)
            if let nvram { Self.remove(nvram) }
            throw error
        }
    }

    static func remove(_ nvram: String) {
        try? FileManager.default.removeItem(atPath: nvram)
        Cleanup.shared.remove(nvram)
    }
}

/// A libvirt domain's serial console, with a tick every 100 ms of wall-clock time.
final class LibvirtGuest: GuestConsole, Sendable {
    let domain: LibvirtDomain
    let stream: ConsoleStream
    let cleanupToken: Int
    let nvram: String?
    private let feed: LiveConsoleFeed

    init(domain: LibvirtDomain, stream: ConsoleStream, cleanupToken: Int, nvram: String?) {
        self.domain = domain
        self.stream = stream
        self.cleanupToken = cleanupToken
        self.nvram = nvram
        feed = LiveConsoleFeed(output: stream.output)
    }

    func next() async -> ConsoleEvent { await feed.next() }
    func send(_ bytes: [UInt8]) throws { try stream.send(bytes) }
    func destroy() {
        feed.stop()
        stream.close()
        domain.destroy()
        Cleanup.shared.removeAction(cleanupToken)
        if let nvram { LibvirtHypervisor.remove(nvram) }
    }
}

