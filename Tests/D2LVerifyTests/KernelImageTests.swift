import Foundation
import Testing
@testable import D2LVerify

/// A bzImage's first sectors as the boot protocol lays them out, with `version` where 0x20E points.
func bzImageHeader(version: String?, magic: String = "HdrS", protocolVersion: UInt16 = 0x20F) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: 0x4000)
    bytes[0x1FE] = 0x55
    bytes[0x1FF] = 0xAA
    bytes.replaceSubrange(0x202..<0x206, with: Array(magic.utf8))
    bytes[0x206] = UInt8(protocolVersion & 0xFF)
    bytes[0x207] = UInt8(protocolVersion >> 8)
    if let version {
        let offset = 0x3000
        bytes.replaceSubrange(offset..<offset + version.utf8.count, with: Array(version.utf8))
        let pointer = offset - 0x200
        bytes[0x20E] = UInt8(pointer & 0xFF)
        bytes[0x20F] = UInt8(pointer >> 8)
    }
    return bytes
}

let bookwormVersion = "6.1.0-50-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)"
/// As the console session gives it: the printk timestamp taken off.
let bookwormBanner = "Linux version 6.1.0-50-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) "
    + "12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)"

@Suite struct KernelImageTests {
    @Test func readsTheVersionStringTheHeaderPointsAt() throws {
        let text = try KernelImage.versionString(header: bzImageHeader(version: bookwormVersion))
        #expect(text == bookwormVersion)
        let kernel = KernelImage(path: "/k", versionString: text)
        #expect(kernel.release == "6.1.0-50-amd64")
        #expect(kernel.builder == "debian-kernel@lists.debian.org")
        #expect(kernel.build == "#1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)")
    }

    @Test func refusesWhatIsNotABzImage() throws {
        #expect(throws: KernelImage.BzImageHeaderError.self) {
            try KernelImage.versionString(header: bzImageHeader(version: bookwormVersion, magic: "ELF\u{7F}"))
        }
        #expect(throws: KernelImage.BzImageHeaderError.self) {
            try KernelImage.versionString(header: bzImageHeader(version: nil))
        }
        #expect(throws: KernelImage.BzImageHeaderError.self) {
            try KernelImage.versionString(header: bzImageHeader(version: bookwormVersion, protocolVersion: 0x0104))
        }
        #expect(throws: KernelImage.BzImageHeaderError.self) {
            try KernelImage.versionString(header: Array(bzImageHeader(version: bookwormVersion).prefix(0x100)))
        }
    }

    @Test func fileThatIsNotAKernelIsAnErrorNamingIt() throws {
        let path = NSTemporaryDirectory() + "d2l-not-a-kernel-\(getpid())"
        _ = FileManager.default.createFile(atPath: path, contents: Data("just text\n".utf8))
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            _ = try KernelImage(path: path)
            Issue.record("a text file was taken for a kernel")
        } catch let error as VerifyError {
            guard case .notAKernel(let named, _) = error else { Issue.record("\(error)"); return }
            #expect(named == path)
        }
        let kernelPath = path + ".bz"
        _ = FileManager.default.createFile(atPath: kernelPath, contents: Data(bzImageHeader(version: bookwormVersion)))
        defer { try? FileManager.default.removeItem(atPath: kernelPath) }
        #expect(try KernelImage(path: kernelPath).release == "6.1.0-50-amd64")
        #expect(throws: VerifyError.self) { try KernelImage(path: path + ".missing") }
    }

    @Test func bannerPatternAcceptsOnlyThisBuild() throws {
        let kernel = KernelImage(path: "/k", versionString: bookwormVersion)
        let banner = try ConsolePattern(kernel.bannerPattern)
        let other = try ConsolePattern(kernel.otherKernelPattern)
        #expect(banner.firstMatch(in: bookwormBanner)?.last == "6.1.0-50-amd64")
        #expect(other.firstMatch(in: bookwormBanner) == nil)
        // Same release, another build (a rebuilt tree whose bzImage was not copied): not this kernel.
        let rebuilt = bookwormBanner.replacingOccurrences(of: "#1 SMP", with: "#2 SMP")
        #expect(banner.firstMatch(in: rebuilt) == nil)
        #expect(other.firstMatch(in: rebuilt) != nil)
        let older = bookwormBanner.replacingOccurrences(of: "6.1.0-50-amd64", with: "6.1.0-49-amd64")
        #expect(other.firstMatch(in: older) != nil)
        // A release that only starts like this one.
        let longer = bookwormBanner.replacingOccurrences(of: "6.1.0-50-amd64", with: "6.1.0-50-amd64-rt")
        #expect(banner.firstMatch(in: longer) == nil)
        #expect(other.firstMatch(in: longer) != nil)
    }

    @Test func directBootXMLLoadsKernelInitrdAndCommandLineInsteadOfTheDisk() {
        let line = DirectKernelBoot.commandLine(root: "UUID=abc", extra: "init=/bin/false")
        #expect(line.hasPrefix("root=UUID=abc ro "))
        #expect(line.hasSuffix("init=/bin/false console=tty0 console=ttyS0,115200"))
        let spec = MachineSpec(
            diskPath: "/d.img",
            directBoot: DirectKernelBoot(kernel: "/k/vmlinuz", initrd: "/k/initrd & co", commandLine: line))
        let xml = spec.domainXML
        #expect(xml.contains("<kernel>/k/vmlinuz</kernel>"))
        #expect(xml.contains("<initrd>/k/initrd &amp; co</initrd>"))
        #expect(xml.contains("<cmdline>\(line)</cmdline>"))
        #expect(!xml.contains("<boot dev="))
        #expect(!MachineSpec(diskPath: "/d.img").domainXML.contains("<kernel>"))
    }
}

@Suite struct DirectBootPlanTests {
    func directPlan(_ version: String) -> StagePlan {
        var directPlan = plan(initSystem: .systemd)
        directPlan.bootDirectly(KernelImage(path: "/k", versionString: version))
        return directPlan
    }

    @Test func theGivenKernelPassesWithoutABootloaderStage() async throws {
        let (report, _) = try await verify("debian12-systemd.log", plan: directPlan(bookwormVersion))
        #expect(report.passed)
        #expect(report.stages.map(\.name) == ["kernel", "init", "login"])
        #expect(report.kernelVersion == "6.1.0-50-amd64")
    }

    @Test func anotherKernelFailsAtTheKernelStageAtOnce() async throws {
        let stale = bookwormVersion.replacingOccurrences(of: "6.1.176-1", with: "6.1.177-1")
        let (report, _) = try await verify("debian12-systemd.log", plan: directPlan(stale))
        #expect(!report.passed)
        #expect(report.failedStage == "kernel")
        #expect(report.reason?.hasPrefix("another kernel booted: ") == true)
        #expect(report.stages.allSatisfy { !$0.reached })
    }
}
