import D2LSupport
import Foundation

/// Chooses the accelerator, probing KVM once per process.
public actor AcceleratorProbe {
    public static let shared = AcceleratorProbe()
    /// Started by the first caller that needs it; later callers, even at the same moment, await it.
    private var kvmProbe: Task<Bool, Never>?

    /// kvm or tcg for `requested`; for auto, KVM only when a probe guest really runs under it.
    ///
    /// SeaBIOS and even syslinux run under a broken KVM; the kernel then hangs. So the probe boots the
    /// disk under test itself, with a short deadline, and KVM counts only once the kernel's banner appears.
    public func resolve(
        _ requested: Accelerator, hypervisor: LibvirtHypervisor, probe machine: MachineSpec,
        deadline: Duration = .seconds(5)
    ) async -> (Accelerator, warning: String?) {
        switch requested {
        case .kvm, .tcg: return (requested, nil)
        case .auto: break
        }
        // Another architecture's guest is emulated: KVM runs only the host's own.
        if machine.architecture != .host { return (.tcg, nil) }
        let place = Self.probePlace(hypervisor)
        let task = kvmProbe ?? Task {
            if let remembered = Self.remembered(for: place) { return remembered }
            let works = await Self.probe(hypervisor: hypervisor, machine: machine, deadline: deadline)
            Self.remember(works, for: place)
            return works
        }
        kvmProbe = task
        if await task.value { return (.kvm, nil) }
        let access = (try? QEMUIdentity.forThisProcess())?.kvmAccessProblem.map { " (\($0))" } ?? ""
        return (.tcg, "warning: KVM is missing or does not run guests here; using TCG (slower)" + access)
    }

    /// The probe's answer is kept for the host's current boot (and a day at most), so that a run
    /// of many `d2l verify` processes (d2l test, git bisect run) pays for it once; it holds for the
    /// place it was asked of only (`probePlace`): KVM may work for root and not for QEMU's user, or
    /// on one daemon's host and not on another's.
    private struct Remembered: Codable {
        var bootID: String
        var place: String
        var kvmWorks: Bool
        var time: Double
    }

    /// Where KVM was probed: the embedded driver's QEMU user (`embedded uid=N`), or a daemon's URI.
    static func probePlace(_ hypervisor: LibvirtHypervisor) -> String {
        guard hypervisor.connection.isEmbedded else { return hypervisor.connection.uri }
        return "embedded uid=\((try? QEMUIdentity.forThisProcess())?.uid ?? geteuid())"
    }

    static var rememberedFile: String { CacheDirectory.path + "/kvm-probe.json" }

    static var bootID: String? {
        guard let data = FileManager.default.contents(atPath: "/proc/sys/kernel/random/boot_id") else { return nil }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func remembered(for place: String) -> Bool? {
        guard let bootID, let data = FileManager.default.contents(atPath: rememberedFile),
            let r = try? JSONDecoder().decode(Remembered.self, from: data), r.bootID == bootID, r.place == place,
            Date().timeIntervalSince1970 - r.time < 86_400
        else { return nil }
        return r.kvmWorks
    }

    static func remember(_ works: Bool, for place: String) {
        guard let bootID,
            let data = try? JSONEncoder().encode(
                Remembered(bootID: bootID, place: place, kvmWorks: works, time: Date().timeIntervalSince1970))
        else { return }
        try? FileManager.default.createDirectory(atPath: CacheDirectory.path, withIntermediateDirectories: true)
        try? data.write(to: URL(fileURLWithPath: rememberedFile), options: .atomic)
    }

    /// Boots the disk under KVM and waits for the kernel's banner.
    private static func probe(hypervisor: LibvirtHypervisor, machine: MachineSpec, deadline: Duration) async -> Bool {
        // This machine's /dev/kvm says nothing of a daemon's host: there, only the probe guest can tell.
        if hypervisor.connection.isEmbedded, !FileManager.default.isReadableFile(atPath: "/dev/kvm") { return false }
        var spec = machine
        spec.name = MachineSpec.uniqueName(prefix: "d2l-verify-kvm-probe")
        spec.accelerator = .kvm
        spec.memoryMiB = min(machine.memoryMiB, 512)
        guard let console = try? await hypervisor.powerOn(spec) else { return false }
        defer { console.destroy() }
        let start = ContinuousClock.now
        var text = ConsoleText()
        while ContinuousClock.now - start < deadline {
            switch await console.next() {
            case .bytes(let bytes):
                if (text.append(bytes).map(\.text) + [text.partialLine]).contains(where: { $0.contains("Linux version") }) {
                    return true
                }
            case .tick:
                continue
            case .closed:
                return false
            }
        }
        return false
    }
}
