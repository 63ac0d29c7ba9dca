import D2LDiskModel
import Foundation
import Testing

@testable import D2LVerify

/// arm64 guests: the `virt` machine with AAVMF, the kernel's identity read from an arm64 Image.
@Suite struct Arm64MachineTests {
    /// Debian 12's arm64 banner as the Image carries it (init/version-timestamp.c's).
    static let banner =
        "Linux version 6.1.0-50-cloud-arm64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, "
        + "GNU ld (GNU Binutils for Debian) 2.40) #1 SMP Debian 6.1.176-1 (2026-07-02)"
    /// The placeholder banner of init/version.c that the same Image also holds, with no build number.
    static let placeholder = banner.replacingOccurrences(of: "#1 SMP", with: "# SMP")

    /// An arm64 Image: the 64-byte header with its magic at 56, then both banners as in Linux 6.1+.
    static func image() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 4096)
        bytes.replaceSubrange(56..<60, with: Array("ARM\u{64}".utf8))
        bytes += Array(placeholder.utf8) + [0x0A, 0] + [UInt8](repeating: 0x11, count: 100)
        bytes += Array(banner.utf8) + [0x0A, 0] + [UInt8](repeating: 0, count: 100)
        return bytes
    }

    @Test("an arm64 UEFI machine: aarch64 virt, AAVMF's code and NVRAM template, a Cortex-A57 under TCG, no x86 parts")
    func uefiMachine() {
        let spec = MachineSpec(name: "d2l-verify-test", diskPath: "/d/disk.img", firmware: .uefi, architecture: .arm64)
        let xml = spec.domainXML
        for needle in [
            "<type arch='aarch64' machine='virt'>hvm</type>", "/usr/share/AAVMF/AAVMF_CODE.fd",
            "template='/usr/share/AAVMF/AAVMF_VARS.fd'", "<model fallback='forbid'>cortex-a57</model>", "<acpi/>",
        ] {
            #expect(xml.contains(needle), "\(needle)")
        }
        for absent in ["<apic/>", "<bios", "q35", "OVMF", "<smm"] { #expect(!xml.contains(absent), "\(absent)") }
        #expect(spec.uefiFiles == .aavmf)
    }

    @Test("an arm64 direct kernel boot: no firmware, no ACPI (QEMU's loader gives a device tree), ttyAMA0")
    func directBoot() {
        let commandLine = DirectKernelBoot.commandLine(root: "/dev/vda2", extra: nil, architecture: .arm64)
        #expect(commandLine.hasSuffix("console=tty0 console=ttyAMA0,115200"))
        let spec = MachineSpec(
            name: "d2l-verify-test", diskPath: "/d/disk.img",
            directBoot: DirectKernelBoot(kernel: "/k/Image", initrd: nil, commandLine: commandLine), architecture: .arm64)
        let xml = spec.domainXML
        #expect(xml.contains("<kernel>/k/Image</kernel>") && xml.contains("machine='virt'"))
        for absent in ["<loader", "<nvram", "<acpi/>", "<bios"] { #expect(!xml.contains(absent), "\(absent)") }
        #expect(DirectKernelBoot.commandLine(root: "/dev/vda2", extra: nil).hasSuffix("console=ttyS0,115200"))
    }

    @Test("the banner read from an arm64 Image is the printed one, in the bzImage header's shape")
    func bannerFromImage() throws {
        let version = try #require(KernelImage.versionString(banner: Self.image()))
        #expect(version == "6.1.0-50-cloud-arm64 (debian-kernel@lists.debian.org) #1 SMP Debian 6.1.176-1 (2026-07-02)")
        let kernel = KernelImage(path: "/k", versionString: version, architecture: .arm64)
        #expect(kernel.release == "6.1.0-50-cloud-arm64" && kernel.builder == "debian-kernel@lists.debian.org")
        // The console's line matches; the placeholder line with another build does not.
        let banner = try NSRegularExpression(pattern: kernel.bannerPattern)
        #expect(banner.firstMatch(in: Self.banner, range: NSRange(Self.banner.startIndex..., in: Self.banner)) != nil)
    }

    @Test("KernelImage reads arm64 Images plain and gzip-compressed (as Debian ships them), and says what else it found")
    func arm64KernelFiles() async throws {
        let dir = NSTemporaryDirectory() + "d2l-arm64-kernel-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(Self.image()).write(to: URL(fileURLWithPath: dir + "/Image"))
        let plain = try KernelImage(path: dir + "/Image")
        #expect(plain.architecture == .arm64 && plain.release == "6.1.0-50-cloud-arm64")
        let gzip = Process()
        gzip.executableURL = URL(fileURLWithPath: "/bin/gzip")
        gzip.arguments = ["-k", dir + "/Image"]
        try gzip.run()
        gzip.waitUntilExit()
        let compressed = try KernelImage(path: dir + "/Image.gz")
        #expect(compressed.architecture == .arm64 && compressed.versionString == plain.versionString)
        // gzip of something else: named as neither kind of kernel.
        try Data("not a kernel".utf8).write(to: URL(fileURLWithPath: dir + "/text"))
        let gzipText = Process()
        gzipText.executableURL = URL(fileURLWithPath: "/bin/gzip")
        gzipText.arguments = ["-k", dir + "/text"]
        try gzipText.run()
        gzipText.waitUntilExit()
        do {
            _ = try KernelImage(path: dir + "/text.gz")
            Issue.record("gzip'd text was taken for a kernel")
        } catch let error as VerifyError {
            #expect("\(error)".contains("arm64 Image"))
        }
    }
}
