import ArgumentParser
import D2LVerify

/// The virtual machine a boot runs in: shared by `d2l verify` and `d2l bisect`.
struct MachineOptions: ParsableArguments {
    @Option(help: "libvirt URI (default: $D2L_LIBVIRT_URI, else qemu:///embed?root=<cache>/libvirt).")
    var connect: String?

    @Option(help: "Accelerator: auto (KVM if it really runs a guest, else TCG), kvm or tcg.")
    var accel: String = "auto"

    @Option(help: "Guest memory in MiB.")
    var memory: Int = 1024

    @Option(help: "Guest CPUs.")
    var cpus: Int = 2

    @Option(help: "Disk bus: virtio or sata.")
    var diskBus: String = "virtio"

    /// The accelerator and bus asked for, or the first problem with the options.
    func checked() throws -> (Accelerator, DiskBus) {
        guard let accelerator = Accelerator(rawValue: accel) else {
            throw VerifyError.badOption("--accel must be auto, kvm or tcg, not '\(accel)'")
        }
        guard let bus = DiskBus(rawValue: diskBus) else {
            throw VerifyError.badOption("--disk-bus must be virtio or sata, not '\(diskBus)'")
        }
        guard memory >= 64 else { throw VerifyError.badOption("--memory is in MiB and must be at least 64") }
        guard (1...64).contains(cpus) else { throw VerifyError.badOption("--cpus must be between 1 and 64") }
        return (accelerator, bus)
    }
}
