import ArgumentParser
import D2LVerify

/// The virtual machine a boot runs in: shared by `d2l verify` and `d2l bisect`. Options not given
/// leave the request's values (a scenario's, else the defaults) as they are.
struct MachineOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "libvirt URI (default: $D2L_LIBVIRT_URI, else qemu:///embed?root=<cache>/libvirt).",
        discussion: "A daemon on another host (qemu+tls://HOST/system, qemu+ssh://USER@HOST/system) gets the disk "
            + "uploaded into its storage pool, named by the disk's content, and removed when d2l ends.",
        valueName: "uri"))
    var connect: String?

    @Option(help: "Accelerator: auto (KVM if it really runs a guest, else TCG), kvm or tcg (default: auto).")
    var accel: Accelerator?

    @Option(help: "Guest memory in MiB (default: 1024).")
    var memory: Int?

    @Option(help: "Guest CPUs (default: 2).")
    var cpus: Int?

    @Option(help: "Disk bus (default: virtio).")
    var diskBus: DiskBus?

    @Option(help: "The guest's network: none (no NIC) or user (one virtio NIC on QEMU's user-mode network, DHCP 10.0.2.0/24) (default: none).")
    var network: GuestNetwork?

    @Option(help: ArgumentHelp(
        "With --connect to a daemon on another host: the storage pool the disk is uploaded to (default: default).",
        valueName: "pool"))
    var storagePool: String?

    /// Lays the options given on `machine`.
    func apply(to machine: inout MachineRequest) {
        if let connect { machine.connect = connect }
        if let accel { machine.accelerator = accel }
        if let memory { machine.memoryMiB = memory }
        if let cpus { machine.cpus = cpus }
        if let diskBus { machine.diskBus = diskBus }
        if let network { machine.network = network }
        if let storagePool { machine.storagePool = storagePool }
    }
}
