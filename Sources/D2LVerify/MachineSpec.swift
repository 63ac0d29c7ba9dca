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

/// The guest's network: none (no NIC at all), or one virtio NIC on QEMU's user-mode network.
public enum GuestNetwork: String, Sendable, CaseIterable, Codable {
    /// No NIC: what a boot does when nothing is plugged in (UEFI firmware does not try PXE).
    case none
    /// One virtio NIC on QEMU's own user-mode network (SLIRP: the guest gets 10.0.2.15/24 by DHCP,
    /// the gateway 10.0.2.2 and the resolver 10.0.2.3); needs no libvirt network driver, so it works
    /// with the embedded driver, and reaches nothing on the host unless the host's routes allow it.
    case user
}

/// How the disk under test reaches QEMU; either way the image itself is never written.
public enum DiskAttachment: Sendable, Equatable {
    /// QEMU opens the image's path, with libvirt's transient overlay beside it
    /// (`<transient shareBacking='yes'/>`): for libvirt daemons, which bring their own users and labels.
    case transientOverlay
    /// QEMU writes to a qcow2 overlay of d2l's own at `overlay`, backed by the image through a read-only
    /// file descriptor passed under `fdGroup` (virDomainFDAssociate, libvirt 9.0): QEMU never opens the
    /// image's path, so it needs no right to it and cannot write it. The embedded driver's way.
    case descriptorBacked(overlay: String, fdGroup: String)
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
    public var network: GuestNetwork
    /// Boot this kernel directly (QEMU loads it) instead of the disk's bootloader.
    public var directBoot: DirectKernelBoot?
    /// SeaBIOS on `pc`, or OVMF on `q35` (with Secure Boot: the enrolled firmware and SMM); on arm64
    /// always AAVMF on `virt`.
    public var firmware: Firmware
    /// The guest's architecture: amd64 (`qemu-system-x86_64`) or arm64 (`qemu-system-aarch64`, machine
    /// `virt`, a Cortex-A57 under TCG, the console on its PL011 UART).
    public var architecture: Architecture
    /// For UEFI: the machine's own NVRAM file, made from the firmware's template at power-on and
    /// thrown away after (set by the hypervisor).
    public var nvramPath: String?
    /// How QEMU gets the disk (set by the hypervisor).
    public var diskAttachment: DiskAttachment = .transientOverlay

    public init(
        name: String = MachineSpec.uniqueName(), diskPath: String, diskFormat: DiskFormat = .raw,
        accelerator: Accelerator = .tcg, memoryMiB: Int = 1024, cpus: Int = 2, diskBus: DiskBus = .virtio,
        directBoot: DirectKernelBoot? = nil, firmware: Firmware = .bios, network: GuestNetwork = .none,
        architecture: Architecture = .amd64
    ) {
        self.architecture = architecture
        self.network = network
        self.firmware = firmware
        self.name = name
        self.diskPath = diskPath
        self.diskFormat = diskFormat
        self.accelerator = accelerator
        self.memoryMiB = memoryMiB
        self.cpus = cpus
        self.diskBus = diskBus
        self.directBoot = directBoot
    }

    /// SeaBIOS mirrored to the serial port, or OVMF's code and this machine's NVRAM.
    private var firmwareXML: String {
        guard let files = uefiFiles else { return architecture == .amd64 ? "<bios useserial='yes'/>" : "" }
        // Without a path of d2l's, the daemon makes the NVRAM where it keeps its own (a remote host's).
        let nvram = nvramPath.map { ">\(XMLText.escape($0))</nvram>" } ?? "/>"
        return "<loader readonly='yes' secure='\(files.secure ? "yes" : "no")' type='pflash'>\(XMLText.escape(files.code))</loader>"
            + "\n    <nvram template='\(XMLText.escape(files.varsTemplate))'\(nvram)"
    }

    /// The pid of the d2l process that named a domain `d2l-verify[-KIND]-PID-RANDOM`; nil for other names.
    public static func ownerPID(ofDomainNamed name: String) -> pid_t? {
        guard name.hasPrefix("d2l-verify-") else { return nil }
        let words = name.split(separator: "-")
        guard words.count >= 4, let pid = pid_t(words[words.count - 2]), pid > 0 else { return nil }
        return pid
    }

    /// A name no other run uses at the same time: pid, time and randomness.
    public static func uniqueName(prefix: String = "d2l-verify") -> String {
        let random = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        return "\(prefix)-\(getpid())-\(random)"
    }

    /// The UEFI firmware's code and variable store template: OVMF from Debian's ovmf package (the 4 MiB
    /// builds, without Secure Boot, or with it and Microsoft's keys enrolled in the template), or AAVMF
    /// from qemu-efi-aarch64 for arm64 (64 MiB flash images).
    public struct UEFIFiles: Sendable, Equatable {
        public var code: String
        public var varsTemplate: String
        public var secure: Bool
        /// The Debian package that has the files, for the message when they are missing.
        public var package: String = "ovmf"

        /// AAVMF, the arm64 build of edk2 for QEMU's `virt` machine, without Secure Boot.
        public static let aavmf = UEFIFiles(
            code: "/usr/share/AAVMF/AAVMF_CODE.fd", varsTemplate: "/usr/share/AAVMF/AAVMF_VARS.fd", secure: false,
            package: "qemu-efi-aarch64")

        public static func ovmf(secure: Bool) -> UEFIFiles {
            secure
                ? UEFIFiles(
                    code: "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", varsTemplate: "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
                    secure: true)
                : UEFIFiles(
                    code: "/usr/share/OVMF/OVMF_CODE_4M.fd", varsTemplate: "/usr/share/OVMF/OVMF_VARS_4M.fd", secure: false)
        }

        /// The files missing on this host, with the package that has them.
        public var missing: String? {
            [code, varsTemplate].first { !FileManager.default.isReadableFile(atPath: $0) }
                .map { "\($0) is missing: install Debian's \(package) package" }
        }
    }

    public var uefiFiles: UEFIFiles? {
        // arm64 boots UEFI only; a direct kernel boot there needs no firmware (QEMU's own loader starts it).
        if architecture == .arm64 { return directBoot == nil ? .aavmf : nil }
        switch firmware {
        case .bios: return nil
        case .uefi: return .ovmf(secure: false)
        case .uefiSecure: return .ovmf(secure: true)
        }
    }

    /// The NIC, when asked for. Its boot ROM is turned off: the disk is the only boot device, and
    /// firmware that falls through to PXE would spend 30-40 s on it before failing a disk that does not boot.
    private var interfaceXML: String {
        switch network {
        case .none: return ""
        case .user: return "<interface type='user'><model type='virtio'/><rom enabled='no'/></interface>"
        }
    }

    /// The disk under test: the image with libvirt's transient overlay, or d2l's overlay over the image's descriptor.
    private func diskXML(target: String) -> String {
        let image = XMLText.escape(diskPath)
        let format = XMLText.escape(diskFormat.qemuFormat)
        let targetXML = "<target dev='\(target)' bus='\(diskBus.rawValue)'/>"
        switch diskAttachment {
        case .transientOverlay:
            return """
                <disk type='file' device='disk'>
                      <driver name='qemu' type='\(format)'/>
                      <source file='\(image)'/>
                      \(targetXML)
                      <transient shareBacking='yes'/>
                    </disk>
                """
        case .descriptorBacked(let overlay, let group):
            return """
                <disk type='file' device='disk'>
                      <driver name='qemu' type='qcow2'/>
                      <source file='\(XMLText.escape(overlay))'/>
                      <backingStore type='file'>
                        <format type='\(format)'/>
                        <source file='\(image)' fdgroup='\(XMLText.escape(group))'/>
                        <backingStore/>
                      </backingStore>
                      \(targetXML)
                    </disk>
                """
        }
    }

    /// The libvirt domain XML: transient disk, no relabelling under the embedded driver (a daemon's own
    /// security driver labels what its QEMU opens), serial console, a NIC only when asked,
    /// no USB controller (libvirt adds one by default; the guest would probe it for nothing),
    /// a virtio RNG fed from the host's /dev/urandom (as clouds give one: a guest that makes SSH host
    /// keys at first boot does not wait for entropy under TCG); q35 and OVMF with its own NVRAM for
    /// UEFI (which needs ACPI; Secure Boot needs SMM too).
    public var domainXML: String {
        let type = accelerator == .kvm ? "kvm" : "qemu"
        let target = diskBus == .virtio ? "vda" : "sda"
        var cpu = accelerator == .kvm ? "<cpu mode='host-passthrough'/>" : ""
        var machineType = uefiFiles == nil ? "pc" : "q35"
        var features = "<acpi/><apic/>" + (uefiFiles?.secure == true ? "<smm state='on'/>" : "")
        if architecture == .arm64 {
            machineType = "virt"
            // ACPI tables come from the UEFI firmware there; QEMU's own kernel loader gives a device tree.
            features = uefiFiles == nil ? "" : "<acpi/>"
            // Under TCG a Cortex-A57 boots Debian's kernel in half the time of `max`, whose many features
            // are all emulated (../shared/NOTES.md).
            if accelerator != .kvm { cpu = "<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>cortex-a57</model></cpu>" }
        }
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
                <type arch='\(architecture.qemuName)' machine='\(machineType)'>hvm</type>
                \(firmwareXML)
                \(boot)
              </os>
              <features>\(features)</features>
              \(cpu)
              <clock offset='utc'/>
              <on_poweroff>destroy</on_poweroff>
              <on_reboot>destroy</on_reboot>
              <on_crash>destroy</on_crash>
              <devices>
                \(diskXML(target: target))
                <serial type='pty'><target port='0'/></serial>
                <console type='pty'><target type='serial' port='0'/></console>
                \(interfaceXML)
                <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
                <controller type='usb' model='none'/>
                <memballoon model='none'/>
              </devices>
              \(diskAttachment == .transientOverlay ? "" : "<seclabel type='none'/>")
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

    /// `root=<root> ro`, then `extra`, then the consoles (`tty0`, then the architecture's serial port): the
    /// last `console=` gets /dev/console and a getty.
    ///
    /// systemd is told not to mount /boot: it holds the disk's own kernel, which a direct boot does not use,
    /// and an outside kernel seldom finds its vfat module in the root file system's /lib/modules, so the
    /// mount would fail with a [FAILED] line that says nothing about the kernel under test.
    public static func commandLine(root: String, extra: String?, architecture: Architecture = .amd64) -> String {
        var words = ["root=\(root)", "ro", "systemd.mask=boot.mount"]
        if let extra, !extra.trimmingCharacters(in: .whitespaces).isEmpty { words.append(extra) }
        return (words + ["console=tty0", "console=\(architecture.serialConsole),115200"]).joined(separator: " ")
    }
}
