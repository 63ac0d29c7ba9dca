import D2LDiskModel
import D2LSupport
import Foundation

/// How the guest's CPU is provided.
public enum Accelerator: String, Sendable, CaseIterable, Codable {
    case auto, kvm, tcg
}

/// The bus the disk under test sits on.
public enum DiskBus: String, Sendable, CaseIterable, Codable {
    case virtio, sata

    /// The whole disk's device name in the guest (`/dev/vda`, `/dev/sda`); partition N adds N.
    public var devicePrefix: String { self == .virtio ? "/dev/vda" : "/dev/sda" }
}

/// Everything needed to describe the throwaway machine that boots a disk.
public struct MachineSpec: Sendable {
    public var name: String
    public var diskPath: String
    public var diskFormat: DiskFormat
    public var accelerator: Accelerator
    public var memoryMiB: Int
    public var cpus: Int
    public var diskBus: DiskBus
    /// Boot this kernel directly (QEMU loads it) instead of the disk's bootloader.
    public var directBoot: DirectKernelBoot?

    public init(
        name: String = MachineSpec.uniqueName(), diskPath: String, diskFormat: DiskFormat = .raw,
        accelerator: Accelerator = .tcg, memoryMiB: Int = 1024, cpus: Int = 2, diskBus: DiskBus = .virtio,
        directBoot: DirectKernelBoot? = nil
    ) {
        self.name = name
        self.diskPath = diskPath
        self.diskFormat = diskFormat
        self.accelerator = accelerator
        self.memoryMiB = memoryMiB
        self.cpus = cpus
        self.diskBus = diskBus
        self.directBoot = directBoot
    }

    /// A name no other run uses at the same time: pid, time and randomness.
    public static func uniqueName(prefix: String = "d2l-verify") -> String {
        let random = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        return "\(prefix)-\(getpid())-\(random)"
    }

    /// The libvirt domain XML: transient disk, no relabelling, serial console, nothing else.
    public var domainXML: String {
        let type = accelerator == .kvm ? "kvm" : "qemu"
        let target = diskBus == .virtio ? "vda" : "sda"
        let cpu = accelerator == .kvm ? "<cpu mode='host-passthrough'/>" : ""
        var boot = "<boot dev='hd'/>"
        if let direct = directBoot {
            boot = "<kernel>\(XMLText.escape(direct.kernel))</kernel>"
            if let initrd = direct.initrd { boot += "\n    <initrd>\(XMLText.escape(initrd))</initrd>" }
            boot += "\n    <cmdline>\(XMLText.escape(direct.commandLine))</cmdline>"
        }
        return """
            <domain type='\(type)'>
              <name>\(XMLText.escape(name))</name>
              <memory unit='MiB'>\(memoryMiB)</memory>
              <vcpu>\(cpus)</vcpu>
              <os>
                <type arch='x86_64' machine='pc'>hvm</type>
                \(boot)
                <bios useserial='yes'/>
              </os>
              <features><acpi/><apic/></features>
              \(cpu)
              <clock offset='utc'/>
              <on_poweroff>destroy</on_poweroff>
              <on_reboot>destroy</on_reboot>
              <on_crash>destroy</on_crash>
              <devices>
                <disk type='file' device='disk'>
                  <driver name='qemu' type='\(diskFormat.rawValue)'/>
                  <source file='\(XMLText.escape(diskPath))'/>
                  <target dev='\(target)' bus='\(diskBus.rawValue)'/>
                  <transient shareBacking='yes'/>
                </disk>
                <serial type='pty'><target port='0'/></serial>
                <console type='pty'><target type='serial' port='0'/></console>
                <memballoon model='none'/>
              </devices>
              <seclabel type='none'/>
            </domain>
            """
    }
}

/// libvirt's direct kernel boot: QEMU loads the kernel and initrd itself, and no bootloader runs.
public struct DirectKernelBoot: Sendable, Equatable {
    public var kernel: String
    public var initrd: String?
    public var commandLine: String

    public init(kernel: String, initrd: String?, commandLine: String) {
        self.kernel = kernel
        self.initrd = initrd
        self.commandLine = commandLine
    }

    /// `root=<root> ro`, then `extra`, then the consoles: the last `console=` gets /dev/console and a getty.
    ///
    /// systemd is told not to mount /boot: it holds the disk's own kernel, which a direct boot does not use,
    /// and an outside kernel seldom finds its vfat module in the root file system's /lib/modules, so the
    /// mount would fail with a [FAILED] line that says nothing about the kernel under test.
    public static func commandLine(root: String, extra: String?) -> String {
        var words = ["root=\(root)", "ro", "systemd.mask=boot.mount"]
        if let extra, !extra.trimmingCharacters(in: .whitespaces).isEmpty { words.append(extra) }
        return (words + ["console=tty0", "console=ttyS0,115200"]).joined(separator: " ")
    }
}
