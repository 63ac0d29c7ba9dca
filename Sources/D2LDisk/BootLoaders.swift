import D2LDiskModel
import D2LImage
import D2LSupport
import Foundation

/// The loaders a disk gets for each firmware, where each one comes from, and their configuration:
/// syslinux for BIOS; for UEFI systemd-boot, or shim with the distribution's signed GRUB for Secure
/// Boot, at the removable-media path `\EFI\BOOT\BOOTX64.EFI` (`BOOTAA64.EFI` on arm64, which boots
/// UEFI only, with the image's own systemd-boot). All of them boot the same kernel and initrd with the
/// same command line, from the FAT partition that is both /boot and the ESP.
struct BootLoaders {
    /// Where a file placed on the boot partition comes from.
    struct Source: Sendable {
        /// The host file holding it (a file captured from the image, or the build host's).
        var file: String
        /// For the build log: "the image's /usr/lib/shim/shimx64.efi.signed", "the build host's ...".
        var origin: String
    }

    var mode: BootMode
    var secureBoot: Bool
    var architecture: Architecture = .amd64
    /// The EFI loader and the files that make it up, by path on the ESP.
    var efiLoader: EFILoader?
    var efiFiles: [(espPath: String, source: Source)] = []

    /// Where the image keeps the EFI binaries d2l may use (Debian's packages install them there).
    static let systemdBoot = systemdBoot(.amd64)
    /// systemd-boot for `architecture` in the image (Debian package systemd-boot-efi).
    static func systemdBoot(_ architecture: Architecture) -> String {
        "usr/lib/systemd/boot/efi/systemd-boot\(architecture == .amd64 ? "x64" : "aa64").efi"
    }
    static let shim = "usr/lib/shim/shimx64.efi.signed"
    static let signedGrub = "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
    /// The folders whose files the scan saves, so that these binaries are at hand before anything is written.
    static let capturePrefixes = ["boot", "usr/lib/systemd/boot/efi", "usr/lib/shim", "usr/lib/grub/x86_64-efi-signed"]
        .map { ImagePath($0) }
    /// The host's systemd-boot, when the image has none (Debian package systemd-boot-efi).
    static let hostSystemdBoot = "/" + systemdBoot(.amd64)
    /// The host's systemd-boot for `architecture`: only a host of that architecture has it.
    static func hostSystemdBoot(_ architecture: Architecture) -> String { "/" + systemdBoot(architecture) }

    /// The file an image path holds after flattening, saved while scanning; nil when it has none.
    static func imageFile(_ path: String, in tree: FileTree) -> String? {
        guard let (_, node) = tree.resolve(ImagePath(path)) else { return nil }
        return node.capturedFile
    }

    /// Chooses the loaders for `mode`, refusing what cannot work before anything is written.
    ///
    /// - Parameter kernelFile: the kernel as saved from the image, to check its signature for Secure Boot.
    /// - Throws: `DiskError.cannotBoot` naming what to install: no EFI loader for UEFI, or the
    ///   distribution's signed chain missing for `--secure-boot`.
    static func choose(
        mode: BootMode, secureBoot: Bool, tree: FileTree, kernelFile: String?, architecture: Architecture = .amd64
    ) throws(DiskError) -> BootLoaders {
        var loaders = BootLoaders(mode: mode, secureBoot: secureBoot, architecture: architecture)
        let problems = problems(
            mode: mode, secureBoot: secureBoot, tree: tree, kernelFile: kernelFile, architecture: architecture)
        guard problems.isEmpty else { throw .cannotBoot(problems) }
        guard mode.uefi else { return loaders }
        if secureBoot, let shim = imageFile(shim, in: tree), let grub = imageFile(signedGrub, in: tree) {
            loaders.efiLoader = .shim
            // shim runs grubx64.efi from its own folder; no fallback (fbx64.efi) beside it, which would
            // write boot entries and reset the machine.
            loaders.efiFiles = [
                (BootSetup.removableMediaPath(.amd64), Source(file: shim, origin: "the image's /\(Self.shim)")),
                ("EFI/BOOT/grubx64.efi", Source(file: grub, origin: "the image's /\(Self.signedGrub)")),
            ]
        } else if let own = imageFile(systemdBoot(architecture), in: tree) {
            loaders.efiLoader = .systemdBoot
            loaders.efiFiles = [
                (BootSetup.removableMediaPath(architecture), Source(file: own, origin: "the image's /\(systemdBoot(architecture))"))
            ]
        } else {
            let host = hostSystemdBoot(architecture)
            loaders.efiLoader = .systemdBoot
            loaders.efiFiles = [(BootSetup.removableMediaPath(architecture), Source(file: host, origin: "the build host's \(host)"))]
        }
        return loaders
    }

    /// Why the image (or the host) cannot give a disk that boots in `mode`: empty when it can.
    static func problems(
        mode: BootMode, secureBoot: Bool, tree: FileTree, kernelFile: String?, architecture: Architecture = .amd64
    ) -> [String] {
        var problems: [String] = []
        if !architecture.bootsUnderBIOS {
            // No BIOS, and no signed chain d2l can check for this architecture: its own systemd-boot only.
            if mode.bios { problems.append("\(architecture) disks boot under UEFI only: build with --boot uefi (syslinux is for PCs)") }
            if secureBoot { problems.append("--secure-boot is for amd64 disks: d2l has no signed chain to check for \(architecture)") }
            let loader = systemdBoot(architecture)
            if mode.uefi, imageFile(loader, in: tree) == nil, !FileManager.default.isReadableFile(atPath: "/" + loader) {
                problems.append(
                    "UEFI boot on \(architecture) needs the image's own EFI loader, /\(loader): install "
                        + "systemd-boot-efi in the image")
            }
            return problems
        }
        if mode.bios, BootPartition.mbrCodePath(gpt: false) == nil {
            problems.append("BIOS boot needs syslinux's mbr.bin and gptmbr.bin on the build host (Debian: syslinux-common)")
        }
        guard mode.uefi else {
            if secureBoot { problems.append("--secure-boot needs UEFI: build with --boot uefi or hybrid") }
            return problems
        }
        if secureBoot {
            var missing: [String] = []
            if imageFile(shim, in: tree) == nil { missing.append("shim-signed (/\(shim))") }
            if imageFile(signedGrub, in: tree) == nil { missing.append("grub-efi-amd64-signed (/\(signedGrub))") }
            switch kernelFile.flatMap(PEImage.isSigned(path:)) {
            case true?: break
            case false?: missing.append("a signed kernel (Debian: linux-image-amd64): the image's kernel carries no signature")
            case nil: missing.append("a signed kernel in /boot (Debian: linux-image-amd64): the kernel could not be checked")
            }
            if !missing.isEmpty {
                problems.append(
                    "Secure Boot needs the distribution's signed chain in the image: install "
                        + missing.joined(separator: ", "))
            }
        } else if imageFile(systemdBoot, in: tree) == nil, !FileManager.default.isReadableFile(atPath: hostSystemdBoot) {
            problems.append(
                "UEFI boot needs an EFI loader: install systemd-boot-efi in the image (or on the build host), "
                    + "or build with --boot bios")
        }
        return problems
    }

    /// The firmware modes an image can boot in, and for each that it cannot, why: for `d2l inspect`.
    static func supportedModes(
        tree: FileTree, kernelFile: String?, architecture: Architecture = .amd64
    ) -> [(mode: String, problems: [String])] {
        [
            ("bios", problems(mode: .bios, secureBoot: false, tree: tree, kernelFile: kernelFile, architecture: architecture)),
            ("uefi", problems(mode: .uefi, secureBoot: false, tree: tree, kernelFile: kernelFile, architecture: architecture)),
            ("uefi-secure", problems(mode: .uefi, secureBoot: true, tree: tree, kernelFile: kernelFile, architecture: architecture)),
        ]
    }

    /// Writes the loaders' files and configuration under `directory`, which mirrors the boot partition.
    ///
    /// - Throws: `DiskError.io` when a file cannot be copied or written.
    func stage(into directory: String, kernel: String, initrd: String, commandLine: String, title: String) throws(DiskError) {
        func write(_ relative: String, _ text: String) throws(DiskError) {
            let path = directory + "/" + relative
            do {
                try FileManager.default.createDirectory(
                    atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            } catch {
                throw .io(path, message: "\(error.localizedDescription)")
            }
        }
        if mode.bios {
            // SERIAL first: syslinux prints to the VGA console otherwise.
            try write(
                "syslinux/syslinux.cfg",
                """
                SERIAL 0 115200
                DEFAULT linux
                PROMPT 0
                TIMEOUT 0
                LABEL linux
                  LINUX /\(kernel)
                  INITRD /\(initrd)
                  APPEND \(commandLine)

                """)
        }
        for (espPath, source) in efiFiles {
            let path = directory + "/" + espPath
            do {
                try FileManager.default.createDirectory(
                    atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try? FileManager.default.removeItem(atPath: path)
                try FileManager.default.copyItem(atPath: source.file, toPath: path)
            } catch {
                throw .io(source.file, message: "cannot copy it to the ESP: \(error.localizedDescription)")
            }
        }
        switch efiLoader {
        case .systemdBoot:
            try write("loader/loader.conf", "default d2l.conf\ntimeout 0\n")
            try write(
                "loader/entries/d2l.conf",
                "title \(title)\nlinux /\(kernel)\ninitrd /\(initrd)\noptions \(commandLine)\n")
        case .shim, .grub:
            // GRUB reads $cmdpath/grub.cfg: \EFI\BOOT\grub.cfg, beside itself.
            try write(
                "EFI/BOOT/grub.cfg",
                """
                set default=0
                set timeout=0
                menuentry '\(title.replacingOccurrences(of: "'", with: ""))' {
                  linux /\(kernel) \(commandLine)
                  initrd /\(initrd)
                }

                """)
        case nil:
            break
        }
    }

    /// A line for the build log about where each loader came from.
    var description: String {
        var parts: [String] = []
        if mode.bios { parts.append("BIOS: syslinux (the build host's)") }
        if let efiLoader {
            parts.append("UEFI: \(efiLoader) from " + efiFiles.map { "\($0.source.origin)" }.joined(separator: " and "))
        }
        return parts.joined(separator: "; ")
    }
}
