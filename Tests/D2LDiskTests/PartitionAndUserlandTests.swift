import D2LImage
import Foundation
import Testing

@testable import D2LDisk

@Suite("Userland setup")
struct UserlandSetupTests {
    @Test("the root password replaces root's shadow field and keeps every other line")
    func rootPassword() {
        let shadow = "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
        let out = UserlandSetup.setRootPassword(in: shadow, field: "$6$salt$hash", days: 20000)
        #expect(out == "root:$6$salt$hash:20000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")

        let empty = UserlandSetup.setRootPassword(in: "root:!::0:99999:7:::\n", field: "", days: 1)
        #expect(empty == "root::1:0:99999:7:::\n")

        // A short line gets its missing fields.
        #expect(UserlandSetup.setRootPassword(in: "root:x", field: "", days: 5) == "root::5::::::\n")

        // No root entry at all: one is added first.
        let added = UserlandSetup.setRootPassword(in: "daemon:*:1:0:99999:7:::\n", field: "h", days: 2)
        #expect(added == "root:h:2:0:99999:7:::\ndaemon:*:1:0:99999:7:::\n")
        #expect(UserlandSetup.setRootPassword(in: "", field: "h", days: 2) == "root:h:2:0:99999:7:::\n")
    }

    @Test("a serial getty counts only when it is not commented out")
    func serialGetty() {
        #expect(UserlandSetup.hasActiveSerialGetty("T0:23:respawn:/sbin/getty -L ttyS0 115200 vt100\n"))
        #expect(UserlandSetup.hasActiveSerialGetty("ttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100"))
        #expect(!UserlandSetup.hasActiveSerialGetty("#T0:23:respawn:/sbin/getty -L ttyS0 115200 vt100\n"))
        #expect(!UserlandSetup.hasActiveSerialGetty("1:2345:respawn:/sbin/getty 38400 tty1\n"))
        #expect(!UserlandSetup.hasActiveSerialGetty(""))
    }

    @Test("the files laid on a sysvinit image: shadow hash, serial getty, fstab, no container leftovers")
    func generatedFiles() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let layers = try fixture.layers([
            [
                .file("etc/shadow", "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n", mode: 0o640),
                .file("etc/inittab", "id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1"),
                .file("etc/resolv.conf", ""),
                .file("etc/hosts", "127.0.0.1 localhost\n"),
                .file(".dockerenv", ""),
                TarEntry("sbin/init", .file(Array("init".utf8)), mode: 0o755),
            ]
        ])
        let tree = try LayerFlattener(capturePaths: BootFacts.capturePaths, headNames: BootFacts.headNames).scan(layers)
        let facts = BootFacts.examine(tree, architecture: "amd64")
        #expect(facts.initSystem == .sysvinit)
        let setup = UserlandSetup(
            hostname: "box", rootUUID: "0a1b2c3d-0000-4000-8000-000000000001", bootVolumeID: 0x1234_ABCD,
            rootPassword: "secret", passwordSalt: "saltsalt", mtime: 86400 * 20000)
        let files = try setup.files(for: tree, facts: facts)
        func text(_ path: String) -> String? {
            guard let f = files.last(where: { $0.path == ImagePath(path) }), case .file(let bytes) = f.content else {
                return nil
            }
            return String(decoding: bytes, as: UTF8.self)
        }
        // The reference hash: openssl passwd -6 -salt saltsalt secret
        let hash = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1"
        #expect(text("etc/shadow") == "root:\(hash):20000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
        #expect(files.last { $0.path == ImagePath("etc/shadow") }?.metadata.permissions == 0o640)
        #expect(text("etc/inittab")?.hasPrefix("id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\n") == true)
        #expect(text("etc/inittab")?.contains("T0:23:respawn:/sbin/getty -L ttyS0 115200 vt100") == true)
        #expect(text("etc/hostname") == "box\n")
        #expect(text("etc/machine-id") == "")
        #expect(text("etc/fstab")?.contains("UUID=0a1b2c3d-0000-4000-8000-000000000001 / ext4") == true)
        #expect(text("etc/fstab")?.contains("UUID=1234-ABCD /boot vfat") == true)
        // No way to do DHCP in this image: no resolver is made up (the build warns instead).
        #expect(text("etc/resolv.conf")?.contains("nameserver") == false)
        #expect(text("etc/hosts") == nil)  // a real hosts file stays
        #expect(files.contains { $0.path == ImagePath(".dockerenv") && { if case .whiteout = $0.content { true } else { false } }($0) })
    }

    @Test("a root directory left 0700 (debootstrap into mktemp -d) is opened to 0755; a 0755 one is left alone")
    func rootDirectoryMode() throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let setup = UserlandSetup(
            hostname: "box", rootUUID: "0a1b2c3d-0000-4000-8000-000000000001", bootVolumeID: 1,
            rootPassword: nil, passwordSalt: "saltsalt", mtime: 0)
        for (mode, expected) in [(UInt16(0o700), UInt16?(0o755)), (0o755, nil)] {
            let layers = try fixture.layers([
                [TarEntry("./", .directory, mode: mode), TarEntry("sbin/init", .file(Array("init".utf8)), mode: 0o755)]
            ])
            let tree = try LayerFlattener(capturePaths: BootFacts.capturePaths, headNames: BootFacts.headNames).scan(layers)
            #expect(tree.root.metadata.permissions == mode)
            let files = try setup.files(for: tree, facts: BootFacts.examine(tree, architecture: "amd64"))
            #expect(files.first { $0.path.isEmpty }?.metadata.permissions == expected)
        }
    }
}
