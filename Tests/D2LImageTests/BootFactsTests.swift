import D2LImage
import D2LDiskModel
import Foundation
import Testing

@Suite("Boot facts")
struct BootFactsTests {
    /// An ELF executable for `machine` (62 = x86-64, 183 = aarch64), longer than the 64 bytes
    /// the flattener keeps, as every real init is.
    static func elfHeader(machine: UInt16) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 64)
        h[0...3] = [0x7f, 0x45, 0x4c, 0x46]
        h[4] = 2  // 64-bit
        h[5] = 1  // little endian
        h[16] = 2  // ET_EXEC
        h[18] = UInt8(machine & 0xff)
        h[19] = UInt8(machine >> 8)
        return h + [UInt8](repeating: 0x90, count: 200)
    }

    static let osRelease = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n"

    func facts(_ dir: Scratch, architecture: String? = "amd64", initOverride: String? = nil,
        _ body: (TarBuilder) throws -> Void) throws -> BootFacts
    {
        let layer = try dir.layer("image.tar", body)
        return BootFacts.examine(try flatten([layer]), architecture: architecture, initOverride: initOverride)
    }

    @Test("Debian: newest kernel with its initrd; systemd through /sbin/init across a usr-merge /sbin")
    func debianSystemd() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let facts = try facts(dir) { t in
            try t.file("usr/lib/os-release", Self.osRelease)
            try t.symlink("etc/os-release", to: "../usr/lib/os-release")
            try t.symlink("sbin", to: "usr/sbin")
            try t.symlink("lib", to: "usr/lib")
            try t.file(Array("usr/lib/systemd/systemd".utf8), Self.elfHeader(machine: 62), mode: 0o755)
            try t.symlink("usr/sbin/init", to: "/lib/systemd/systemd")
            for version in ["6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-28-amd64"] {
                try t.file("boot/vmlinuz-\(version)", "kernel \(version)")
                try t.file("boot/initrd.img-\(version)", "initrd \(version)!")
            }
            try t.file("boot/vmlinuz-6.2.0-1-amd64.old", "old")
            try t.file("usr/sbin/fsck.ext4", "")
        }
        #expect(facts.problems == [])
        #expect(facts.distro == "Debian GNU/Linux 12 (bookworm)")
        #expect(facts.osRelease.versionID == "12")
        #expect(facts.kernels.count == 3)
        let kernel = try #require(facts.kernel)
        #expect(kernel.version.text == "6.1.0-10-amd64")
        #expect(kernel.kernelPath == ImagePath("boot/vmlinuz-6.1.0-10-amd64"))
        #expect(kernel.initrdPath == ImagePath("boot/initrd.img-6.1.0-10-amd64"))
        #expect(kernel.kernelSize == UInt64("kernel 6.1.0-10-amd64".utf8.count))
        #expect(kernel.initrdSize == UInt64("initrd 6.1.0-10-amd64!".utf8.count))
        #expect(facts.initSystem == .systemd)
        #expect(facts.initResolved == ImagePath("usr/lib/systemd/systemd"))
        #expect(facts.initMachine == 62)
        #expect(facts.hasFsckExt4)
    }

    @Test("a relative /sbin/init symlink is resolved from the directory it lies in")
    func relativeInitChain() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let facts = try facts(dir) { t in
            try t.symlink("sbin", to: "usr/sbin")
            try t.symlink("usr/sbin/init", to: "../lib/systemd/systemd")
            try t.file(Array("usr/lib/systemd/systemd".utf8), Self.elfHeader(machine: 62), mode: 0o755)
        }
        #expect(facts.initResolved == ImagePath("usr/lib/systemd/systemd"))
        #expect(facts.initSystem == .systemd)
    }

    @Test("sysvinit is recognised by its inittab, busybox by the binary's name")
    func otherInits() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let sysv = try facts(dir) { t in
            try t.file(Array("sbin/init".utf8), Self.elfHeader(machine: 62), mode: 0o755)
            try t.file("etc/inittab", "id:2:initdefault:\nsi::sysinit:/etc/init.d/rcS\n")
        }
        #expect(sysv.initSystem == .sysvinit)
        #expect(sysv.initResolved == ImagePath("sbin/init"))

        let busybox = try facts(dir) { t in
            try t.file(Array("bin/busybox".utf8), Self.elfHeader(machine: 62), mode: 0o755)
            try t.symlink("sbin/init", to: "/bin/busybox")
        }
        #expect(busybox.initSystem == .busybox)
        #expect(busybox.initMachine == 62)

        let bare = try facts(dir) { t in try t.file(Array("sbin/init".utf8), Self.elfHeader(machine: 62)) }
        #expect(bare.initSystem == .unknown)
    }

    @Test("Alpine's vmlinuz-virt and initramfs-virt, and a kernel in /usr/lib/modules")
    func otherKernelLayouts() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let alpine = try facts(dir) { t in
            try t.file("boot/vmlinuz-virt", "k")
            try t.file("boot/initramfs-virt", "i")
        }
        #expect(alpine.kernel?.version.text == "virt")
        #expect(alpine.kernel?.initrdPath == ImagePath("boot/initramfs-virt"))

        let modules = try facts(dir) { t in
            try t.file("usr/lib/modules/6.8.0-1/vmlinuz", "k")
            try t.file("usr/lib/modules/6.8.0-1/initramfs.img", "i")
            try t.file("usr/lib/modules/6.10.0-3/vmlinuz", "k")
            try t.file("usr/lib/modules/6.10.0-3/initramfs.img", "i")
        }
        #expect(modules.kernel?.version.text == "6.10.0-3")
        #expect(modules.kernel?.kernelPath == ImagePath("usr/lib/modules/6.10.0-3/vmlinuz"))
        #expect(modules.kernel?.initrdPath == ImagePath("usr/lib/modules/6.10.0-3/initramfs.img"))
    }

    @Test("an image with no kernel, no initrd or no init is refused with a way out")
    func missingPieces() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        let empty = try facts(dir) { t in try t.file("etc/hostname", "x\n") }
        #expect(empty.problems.count == 2)
        #expect(empty.problems.contains { $0.contains("no kernel") && $0.contains("linux-image-amd64") })
        #expect(empty.problems.contains { $0.contains("no /sbin/init") && $0.contains("--init") })

        let noInitrd = try facts(dir) { t in
            try t.file("boot/vmlinuz-6.1.0-10-amd64", "k")
            try t.file(Array("sbin/init".utf8), Self.elfHeader(machine: 62))
        }
        #expect(noInitrd.problems.count == 1)
        #expect(noInitrd.problems.first?.contains("no initrd for kernel 6.1.0-10-amd64") == true)

        // A dangling /sbin/init is no init.
        let dangling = try facts(dir) { t in
            try t.file("boot/vmlinuz-1", "k")
            try t.file("boot/initrd.img-1", "i")
            try t.symlink("sbin/init", to: "/lib/systemd/systemd")
        }
        #expect(dangling.initResolved == nil)
        #expect(dangling.problems.count == 1)

        // --init names another program.
        let custom = try facts(dir, initOverride: "/usr/bin/myinit") { t in
            try t.file("boot/vmlinuz-1", "k")
            try t.file("boot/initrd.img-1", "i")
            try t.file(Array("sbin/init".utf8), Self.elfHeader(machine: 62))
        }
        #expect(custom.problems.count == 1)
        #expect(custom.problems.first?.contains("/usr/bin/myinit") == true)
    }

    @Test("amd64 and arm64 are booted; another architecture, or a config that the init contradicts, is refused")
    func foreignArchitecture() throws {
        let dir = try Scratch()
        defer { dir.remove() }
        func bootable(_ machine: UInt16) -> (TarBuilder) throws -> Void {
            { t in
                try t.file("boot/vmlinuz-1", "k")
                try t.file("boot/initrd.img-1", "i")
                try t.file(Array("sbin/init".utf8), Self.elfHeader(machine: machine))
            }
        }
        let arm = try facts(dir, architecture: "arm64", bootable(183))
        #expect(arm.problems == [] && arm.bootArchitecture == .arm64)
        let unlabelled = try facts(dir, architecture: nil, bootable(183))
        #expect(unlabelled.problems == [] && unlabelled.bootArchitecture == .arm64)

        let s390x = try facts(dir, architecture: "s390x", bootable(22))
        #expect(s390x.problems.count == 1)
        #expect(s390x.problems.first?.contains("s390x") == true)
        #expect(s390x.problems.first?.contains("linux/amd64 or linux/arm64") == true)
        let unknownInit = try facts(dir, architecture: nil, bootable(22))
        #expect(unknownInit.problems.count == 1)
        #expect(unknownInit.problems.first?.contains("ELF machine 22") == true)

        let mislabelled = try facts(dir, architecture: "arm64", bootable(62))
        #expect(mislabelled.problems.count == 1)
        #expect(mislabelled.problems.first?.contains("config says arm64 but its init is an amd64 program") == true)

        let amd64 = try facts(dir, architecture: "amd64", bootable(62))
        #expect(amd64.problems == [] && amd64.bootArchitecture == .amd64)
    }
}
