import D2LDiskModel
import D2LImage
import D2LSupport
import Foundation
import Testing

@testable import D2LDisk

/// A build whose output's file system is full: the error says so, and nothing is left in it.
/// The file system is a 20 MiB tmpfs mounted by the test (root only).
@Suite("Full file system", .serialized, .enabled(if: geteuid() == 0, "mounting a tmpfs needs root"))
struct FullFileSystemTests {
    /// A 20 MiB tmpfs at a new folder; `unmount` detaches it.
    static func smallTmpfs() throws -> String {
        let mountPoint = try BootLayoutTests.scratch()
        guard mount("d2l-full", mountPoint, "tmpfs", 0, "size=20m") == 0 else {
            throw DiskTestError("mount tmpfs at \(mountPoint): \(String(cString: strerror(errno)))")
        }
        return mountPoint
    }

    static func unmount(_ mountPoint: String) {
        umount2(mountPoint, Int32(MNT_DETACH))
        try? FileManager.default.removeItem(atPath: mountPoint)
    }

    /// A bootable root with `megabytes` of random bytes in /opt/noise (they do not compress).
    static func root(noise megabytes: Int) throws -> String {
        let dir = try BootLayoutTests.scratch()
        try BootLayoutTests.makeRoot(dir + "/root")
        try FileManager.default.createDirectory(atPath: dir + "/root/opt", withIntermediateDirectories: true)
        let random = try #require(FileHandle(forReadingAtPath: "/dev/urandom"))
        try random.readData(ofLength: megabytes << 20).write(to: URL(fileURLWithPath: dir + "/root/opt/noise"))
        return dir
    }

    static func build(_ root: String, to output: String, format: DiskFormat? = nil, check: Bool) async throws {
        var options = BuildOptions(output: output)
        options.format = format
        options.minimumHeadroom = 8 << 20
        options.checkFreeSpace = check
        let image = try ImageReader.open(path: root)
        _ = try await DiskBuilder(image: image, options: options, progress: ProgressReporter(mode: .quiet)).build()
    }

    static func usedBytes(_ mountPoint: String) -> UInt64 {
        var fs = statvfs()
        statvfs(mountPoint, &fs)
        return UInt64(fs.f_blocks - fs.f_bfree) * UInt64(fs.f_frsize)
    }

    @Test("a disk larger than the free space is refused before anything is written")
    func refusedBeforeWriting() async throws {
        let input = try Self.root(noise: 30)
        defer { try? FileManager.default.removeItem(atPath: input) }
        let mountPoint = try Self.smallTmpfs()
        defer { Self.unmount(mountPoint) }
        do {
            try await Self.build(input + "/root", to: mountPoint + "/disk.img", check: true)
            Issue.record("the build succeeded on a 20 MiB file system")
        } catch let error as DiskError {
            guard case .noSpace(let directory, _, let needed, _, let whileWriting) = error else {
                Issue.record("expected noSpace, got \(error)")
                return
            }
            // The 30 MiB file alone is over the room: refused at its header, or once sized.
            #expect(directory == mountPoint && !whileWriting && (needed ?? 0) >= 30 << 20)
            #expect("\(error)".contains("has") && "\(error)".contains("nothing was written"))
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: mountPoint).isEmpty)
    }

    @Test("an image that cannot boot is said as such on a file system that is nearly full")
    func otherErrorsStayThemselves() async throws {
        let input = try BootLayoutTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: input) }
        try BootLayoutTests.makeRoot(input + "/root")
        try FileManager.default.removeItem(atPath: input + "/root/boot/vmlinuz-1.0-test")
        let mountPoint = try Self.smallTmpfs()
        defer { Self.unmount(mountPoint) }
        // Leave 512 KiB free.
        let filler = mountPoint + "/filler"
        try Data(count: (20 << 20) - Int(Self.usedBytes(mountPoint)) - (512 << 10)).write(to: URL(fileURLWithPath: filler))
        do {
            try await Self.build(input + "/root", to: mountPoint + "/disk.img", check: true)
            Issue.record("the build succeeded without a kernel")
        } catch let error as DiskError {
            guard case .cannotBoot = error else {
                Issue.record("expected cannotBoot, got \(error)")
                return
            }
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: mountPoint) == ["filler"])
    }

    /// Raw: ext4 fills it. qcow2: the raw disk (12 MB of data) fits, and qemu-img's copy beside it fills it.
    @Test(
        "the file system filling up while the disk is written: an error that says so, and nothing left",
        arguments: [(DiskFormat.raw, 30), (.qcow2, 12)])
    func fullWhileWriting(format: DiskFormat, noise: Int) async throws {
        let input = try Self.root(noise: noise)
        defer { try? FileManager.default.removeItem(atPath: input) }
        let mountPoint = try Self.smallTmpfs()
        defer { Self.unmount(mountPoint) }
        do {
            try await Self.build(input + "/root", to: mountPoint + "/disk." + format.fileExtension, format: format, check: false)
            Issue.record("the build succeeded on a 20 MiB file system")
        } catch let error as DiskError {
            guard case .noSpace(let directory, _, _, _, let whileWriting) = error else {
                Issue.record("expected noSpace, got \(error)")
                return
            }
            #expect(directory == mountPoint && whileWriting)
            #expect("\(error)".contains("is full") && "\(error)".contains("nothing of it is left"), "\(error)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: mountPoint).isEmpty)
        // The anonymous disk's blocks went back to the file system with its last descriptor. A process
        // another test spawns in the same moment holds a copy of it until its exec (O_CLOEXEC): wait a little.
        for _ in 0..<50 where Self.usedBytes(mountPoint) >= 1 << 20 { try await Task.sleep(for: .milliseconds(100)) }
        #expect(Self.usedBytes(mountPoint) < 1 << 20)
    }
}
