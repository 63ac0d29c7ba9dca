/// Something that can power on a machine and hand over its console: libvirt, or a replay of a
/// recorded transcript.
public protocol Hypervisor: Sendable {
    /// Creates the machine paused, attaches the console, then powers it on.
    ///
    /// - Throws: the hypervisor's error (`LibvirtError`) when the machine cannot be created or started.
    func powerOn(_ machine: MachineSpec) async throws -> any GuestConsole
    /// The clock the console's times are measured on.
    var stopwatch: Stopwatch { get }
    /// Whether a guest answers what is typed (a replay of a recorded log does not).
    var answersInput: Bool { get }
}
