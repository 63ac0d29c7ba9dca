import D2LImage
import Foundation

/// Whether the image's initrd can mount the root of the disk d2l writes: a dracut initrd made in
/// host-only mode while the image was built, for example, carries the drivers of the build host's
/// disks and not `virtio_blk`, and the boot stops in the initramfs waiting for the root device.
///
/// A driver is there when the initrd carries its module or the kernel has it built in (the kernel's
/// `modules.builtin`, one `kernel/.../NAME.ko` per line, as `modprobe` reads it).
public enum InitrdDriverCheck {
    /// A driver the root needs before init runs, and what for.
    public struct Need: Sendable, Equatable {
        public var module: String
        public var purpose: String
    }

    /// What a d2l disk's root needs on a virtio disk (d2l verify's default bus, and most clouds').
    public static let needs = [
        Need(module: "virtio_pci", purpose: "the virtio devices on the PCI bus"),
        Need(module: "virtio_blk", purpose: "the virtio disk"),
        Need(module: "ext4", purpose: "the root file system"),
    ]

    /// Module names in a `modules.builtin` text.
    public static func builtinModules(_ text: String) -> Set<String> {
        Set(text.split(whereSeparator: \.isNewline).compactMap { InitramfsListing.moduleName(ofPath: String($0)) })
    }

    /// The needs neither in the initrd nor built into the kernel.
    public static func missing(initrd: Set<String>, builtin: Set<String>) -> [Need] {
        needs.filter { !initrd.contains($0.module) && !builtin.contains($0.module) }
    }

    /// The build's warning, nil when nothing is missing.
    public static func warning(kernel: String, initrd: String, missing: [Need]) -> String? {
        guard !missing.isEmpty else { return nil }
        let list = missing.map { "\($0.module) (\($0.purpose))" }.joined(separator: ", ")
        return "the initrd \(initrd) of kernel \(kernel) lacks \(list), and the kernel does not have "
            + (missing.count == 1 ? "it" : "them") + " built in: the boot will wait for its root device on a "
            + "virtio disk; make the initrd with these drivers (dracut: --no-hostonly or "
            + "add_drivers+=\" \(missing.map(\.module).joined(separator: " ")) \"; initramfs-tools: MODULES=most)"
    }

    /// Checks the initrd file at `initrdFile` against the kernel's `modules.builtin` captured in the
    /// scanned `tree` (`/lib/modules/VERSION/` or `/usr/lib/modules/VERSION/`). Nil when nothing is
    /// missing, or when the check cannot tell (no `modules.builtin`, an initrd it cannot read).
    static func warning(initrdFile: String, initrdName: String, kernel: String, tree: FileTree) -> String? {
        guard let builtinText = BootFacts.builtinModulesText(tree, version: kernel),
            let listing = try? InitramfsListing(path: initrdFile)
        else { return nil }
        let builtin = builtinModules(builtinText)
        return warning(kernel: kernel, initrd: initrdName, missing: missing(initrd: listing.modules, builtin: builtin))
    }
}
