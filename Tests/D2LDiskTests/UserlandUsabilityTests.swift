import D2LDiskModel
import D2LImage
import Foundation
import Testing

@testable import D2LDisk

/// A small image flattened from layer tars, and what UserlandSetup lays on it.
struct UserlandCase {
    var plan: UserlandPlan
    var facts: BootFacts

    init(_ entries: [TarEntry], configure: (inout UserlandSetup) -> Void = { _ in }) throws {
        let fixture = try Ext4Fixture()
        defer { fixture.remove() }
        let tree = try LayerFlattener(capturePaths: BootFacts.capturePaths, headNames: BootFacts.headNames)
            .scan(try fixture.layers([entries]))
        facts = BootFacts.examine(tree, architecture: "amd64")
        var setup = UserlandSetup(
            hostname: "box", rootUUID: "0a1b2c3d-0000-4000-8000-000000000001", bootVolumeID: 0x1234_ABCD,
            rootPassword: nil, passwordSalt: "saltsalt", mtime: 86400 * 20000)
        configure(&setup)
        plan = try setup.plan(for: tree, facts: facts)
    }

    func file(_ path: String) -> SyntheticFile? { plan.files.last { $0.path == ImagePath(path) } }

    func text(_ path: String) -> String? {
        guard let f = file(path), case .file(let bytes) = f.content else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    func symlink(_ path: String) -> String? {
        guard let f = file(path), case .symlink(let target) = f.content else { return nil }
        return String(decoding: target, as: UTF8.self)
    }

    func removed(_ path: String) -> Bool {
        guard let f = file(path), case .whiteout = f.content else { return false }
        return true
    }

    func mode(_ path: String) -> (UInt16, UInt32, UInt32)? {
        file(path).map { ($0.metadata.permissions, $0.metadata.uid, $0.metadata.gid) }
    }

    var warnings: String { plan.warnings.joined(separator: "\n") }
}

/// The pieces of a Debian image with systemd that the userland setup looks for.
enum SampleImage {
    static func systemd(resolved: Bool = true, extra: [TarEntry] = []) -> [TarEntry] {
        var entries: [TarEntry] = [
            TarEntry("sbin/init", .symlink("/usr/lib/systemd/systemd")),
            TarEntry("usr/lib/systemd/systemd", .file(Array("elf".utf8)), mode: 0o755),
            TarEntry("usr/lib/systemd/systemd-networkd", .file([1]), mode: 0o755),
            TarEntry("usr/lib/systemd/systemd-networkd-wait-online", .file([1]), mode: 0o755),
            .file("usr/lib/systemd/system/systemd-networkd.service", "[Unit]\n"),
            .file("usr/lib/systemd/system/systemd-networkd.socket", "[Unit]\n"),
            .file("usr/lib/systemd/system/systemd-networkd-wait-online.service", "[Unit]\n"),
            .file("usr/lib/systemd/system/systemd-repart.service", "[Unit]\n"),
            TarEntry("usr/bin/systemd-repart", .file([1]), mode: 0o755),
            TarEntry("etc/systemd/system", .directory),
            .file("etc/passwd", "root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n"),
            .file("etc/group", "root:x:0:\nsudo:x:27:\nwww-data:x:33:\nshadow:x:42:\nusers:x:100:\n"),
            .file("etc/shadow", "root:*:19000:0:99999:7:::\n", mode: 0o640),
            .file("etc/gshadow", "root:*::\nsudo:*::\n", mode: 0o640),
            .file("etc/resolv.conf", "nameserver 10.255.255.53\n"),
            .file("etc/skel/.profile", "# ~/.profile\n"),
            TarEntry("bin/bash", .file([1]), mode: 0o755),
        ]
        if resolved { entries.append(.file("usr/lib/systemd/system/systemd-resolved.service", "[Unit]\n")) }
        return entries + extra
    }

    /// Debian with sysvinit-core and OpenRC, and ifupdown with `clients` as its DHCP clients.
    static func openrc(ifupdown: Bool = true, clients: [String] = ["dhclient"], extra: [TarEntry] = []) -> [TarEntry] {
        var entries: [TarEntry] = [
            TarEntry("sbin/init", .file(Array("init".utf8)), mode: 0o755),
            TarEntry("sbin/openrc", .file([1]), mode: 0o755),
            .file("etc/inittab", "id:2:initdefault:\nsi::sysinit:/sbin/openrc sysinit\n"),
            TarEntry("etc/runlevels/default", .directory),
            .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            .file("etc/resolv.conf", "nameserver 10.255.255.53\n"),
        ]
        if ifupdown {
            entries += [
                TarEntry("sbin/ifup", .file([1]), mode: 0o755),
                .file("etc/network/interfaces", "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n"),
                TarEntry("etc/init.d/networking", .file([1]), mode: 0o755),
            ]
        }
        for client in clients { entries.append(TarEntry("sbin/\(client)", .file([1]), mode: 0o755)) }
        return entries + extra
    }
}

@Suite("After boot: network")
struct NetworkSetupTests {
    @Test("systemd: networkd by DHCP on any Ethernet NIC, resolved's stub replaces the build host's resolv.conf")
    func systemdWithResolved() throws {
        let c = try UserlandCase(SampleImage.systemd())
        #expect(c.facts.initSystem == .systemd)
        let network = try #require(c.text("etc/systemd/network/80-d2l-dhcp.network"))
        #expect(network.contains("Type=ether") && network.contains("DHCP=yes"))
        #expect(c.symlink("etc/systemd/system/multi-user.target.wants/systemd-networkd.service") == "/usr/lib/systemd/system/systemd-networkd.service")
        #expect(c.symlink("etc/systemd/system/sockets.target.wants/systemd-networkd.socket") != nil)
        #expect(c.symlink("etc/systemd/system/multi-user.target.wants/systemd-resolved.service") != nil)
        // The build host's nameserver is gone: resolv.conf is resolved's stub.
        #expect(c.symlink("etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf")
        // No NIC, no wait: wait-online only runs when an Ethernet NIC exists.
        let dropIn = try #require(c.text("etc/systemd/system/systemd-networkd-wait-online.service.d/d2l.conf"))
        #expect(dropIn.contains("ConditionPathExistsGlob=/sys/class/net/e*"))
        #expect(dropIn.contains("ExecStart=/usr/lib/systemd/systemd-networkd-wait-online --any --timeout=60"))
        #expect(c.plan.warnings.isEmpty, "\(c.warnings)")
    }

    @Test("a resolv.conf that is a symlink into /run is kept")
    func runSymlinkKept() throws {
        var entries = SampleImage.systemd().filter { String(decoding: $0.path, as: UTF8.self) != "etc/resolv.conf" }
        entries.append(TarEntry("etc/resolv.conf", .symlink("../run/systemd/resolve/stub-resolv.conf")))
        let c = try UserlandCase(entries)
        #expect(c.file("etc/resolv.conf") == nil)
        #expect(c.plan.notes.contains { $0.contains("kept: a symlink to ../run/systemd/resolve/stub-resolv.conf") })
    }

    @Test("systemd without resolved: the lease's DNS servers reach resolv.conf through a path unit, with a warning naming the package")
    func systemdWithoutResolved() throws {
        let c = try UserlandCase(SampleImage.systemd(resolved: false))
        let resolv = try #require(c.text("etc/resolv.conf"))
        #expect(!resolv.contains("10.255.255.53"))
        #expect(c.text("etc/systemd/system/d2l-resolv-conf.path")?.contains("PathChanged=/run/systemd/netif/leases") == true)
        let service = try #require(c.text("etc/systemd/system/d2l-resolv-conf.service"))
        #expect(service.contains("$$f") && !service.contains(" $f"))  // systemd would expand a lone $
        #expect(c.symlink("etc/systemd/system/multi-user.target.wants/d2l-resolv-conf.path") == "/etc/systemd/system/d2l-resolv-conf.path")
        #expect(c.warnings.contains("install systemd-resolved"))
    }

    @Test("--network none configures nothing but still drops the build host's resolver")
    func none() throws {
        let c = try UserlandCase(SampleImage.systemd()) { $0.network = .none }
        #expect(c.file("etc/systemd/network/80-d2l-dhcp.network") == nil)
        #expect(c.file("etc/systemd/system/multi-user.target.wants/systemd-networkd.service") == nil)
        #expect(c.text("etc/resolv.conf")?.contains("nameserver") == false)
    }

    @Test("OpenRC: ifupdown with dhclient on the first Ethernet NIC, whatever it is named")
    func openrcIfupdown() throws {
        let c = try UserlandCase(SampleImage.openrc())
        #expect(c.facts.initSystem == .openrc)
        let stanza = try #require(c.text("etc/network/interfaces.d/d2l"))
        #expect(stanza.contains("auto /e*/1=d2l-ether") && stanza.contains("allow-hotplug /e*/1=d2l-ether"))
        #expect(stanza.contains("iface d2l-ether inet dhcp"))
        #expect(c.symlink("etc/runlevels/boot/networking") == "/etc/init.d/networking")
        #expect(c.text("etc/resolv.conf")?.contains("dhclient writes") == true)
        #expect(c.plan.warnings.isEmpty, "\(c.warnings)")
    }

    @Test("an interfaces file without source lines gets the stanza appended")
    func interfacesAppended() throws {
        var entries = SampleImage.openrc().filter { String(decoding: $0.path, as: UTF8.self) != "etc/network/interfaces" }
        entries.append(.file("etc/network/interfaces", "auto lo\niface lo inet loopback\n"))
        let c = try UserlandCase(entries)
        let interfaces = try #require(c.text("etc/network/interfaces"))
        #expect(interfaces.hasPrefix("auto lo\niface lo inet loopback\n"))
        #expect(interfaces.contains("iface d2l-ether inet dhcp"))
    }

    @Test("no way to do DHCP: the build says so and names the package, and writes no network")
    func noDHCPClient() throws {
        let noClient = try UserlandCase(SampleImage.openrc(clients: []))
        #expect(noClient.warnings.contains("install a DHCP client (isc-dhcp-client)"))
        #expect(noClient.file("etc/network/interfaces.d/d2l") == nil)
        #expect(noClient.text("etc/resolv.conf")?.contains("10.255.255.53") == false)
        let noIfupdown = try UserlandCase(SampleImage.openrc(ifupdown: false))
        #expect(noIfupdown.warnings.contains("install ifupdown and a DHCP client"))
    }

    @Test("BusyBox: udhcpc from inittab with d2l's event script")
    func busybox() throws {
        let c = try UserlandCase([
            TarEntry("bin/busybox", .file([1]), mode: 0o755),
            TarEntry("sbin/init", .symlink("/bin/busybox")),
            TarEntry("sbin/udhcpc", .symlink("/bin/busybox")),
            TarEntry("sbin/ip", .symlink("/bin/busybox")),
            .file("etc/inittab", "::sysinit:/etc/init.d/rcS\nttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100\n"),
        ])
        #expect(c.facts.initSystem == .busybox)
        #expect(c.text("etc/inittab")?.contains("::sysinit:/etc/init.d/d2l-network") == true)
        #expect(c.text("etc/inittab")?.hasPrefix("::sysinit:/etc/init.d/rcS\n") == true)
        #expect(c.text("etc/init.d/d2l-network")?.contains("udhcpc -b") == true)
        #expect(c.mode("etc/udhcpc/d2l.script")?.0 == 0o755)
    }
}

@Suite("After boot: identity and access")
struct IdentityAndAccessTests {
    @Test("no machine ID, random seed or host key of the build survives; D-Bus's copy points at /etc/machine-id")
    func perMachineState() throws {
        let c = try UserlandCase(
            SampleImage.systemd(extra: [
                .file("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
                .file("var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n"),
                .file("var/lib/systemd/random-seed", "seed"),
                .file("etc/ssh/ssh_host_ed25519_key", "secret", mode: 0o600),
                .file("etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAA"),
                .file("etc/ssh/sshd_config", "# stays\n"),
                TarEntry("usr/sbin/sshd", .file([1]), mode: 0o755),
                TarEntry("usr/bin/ssh-keygen", .file([1]), mode: 0o755),
                .file("usr/lib/systemd/system/ssh.service", "[Unit]\n"),
            ]))
        #expect(c.text("etc/machine-id") == "")
        #expect(c.symlink("var/lib/dbus/machine-id") == "/etc/machine-id")
        #expect(c.removed("var/lib/systemd/random-seed"))
        #expect(c.removed("etc/ssh/ssh_host_ed25519_key") && c.removed("etc/ssh/ssh_host_ed25519_key.pub"))
        #expect(c.file("etc/ssh/sshd_config") == nil)
        let keygen = try #require(c.text("etc/systemd/system/d2l-ssh-host-keys.service"))
        #expect(keygen.contains("ExecStart=/usr/bin/ssh-keygen -A") && keygen.contains("Before=ssh.service"))
        #expect(c.symlink("etc/systemd/system/ssh.service.wants/d2l-ssh-host-keys.service") != nil)
        #expect(c.symlink("etc/systemd/system/multi-user.target.wants/d2l-ssh-host-keys.service") != nil)
    }

    @Test("OpenRC makes host keys with a service before ssh")
    func openrcHostKeys() throws {
        let c = try UserlandCase(
            SampleImage.openrc(extra: [
                TarEntry("usr/sbin/sshd", .file([1]), mode: 0o755), TarEntry("usr/bin/ssh-keygen", .file([1]), mode: 0o755),
            ]))
        #expect(c.text("etc/init.d/d2l-ssh-host-keys")?.contains("before ssh sshd") == true)
        #expect(c.symlink("etc/runlevels/default/d2l-ssh-host-keys") == "/etc/init.d/d2l-ssh-host-keys")
    }

    @Test("--user makes an account with a home, a group, sudo, a SHA-512 password and keys sshd accepts")
    func userWithKey() throws {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBwGxcU0f6Gqh test@example"
        let c = try UserlandCase(SampleImage.systemd(extra: [TarEntry("usr/bin/sudo", .file([1]), mode: 0o4755)])) {
            $0.user = UserAccount(parsing: "alice:s3cret")
            $0.authorizedKeys = [key]
        }
        #expect(c.text("etc/passwd")?.contains("alice:x:1000:1000::/home/alice:/bin/bash\n") == true)
        #expect(c.text("etc/group")?.contains("alice:x:1000:\n") == true)
        #expect(c.text("etc/group")?.contains("sudo:x:27:alice\n") == true)
        #expect(c.text("etc/gshadow")?.contains("sudo:*::alice\n") == true)
        #expect(c.text("etc/gshadow")?.contains("alice:!::\n") == true)
        let shadow = try #require(c.text("etc/shadow"))
        #expect(shadow.contains("\nalice:$6$"))
        #expect(c.mode("etc/shadow")?.0 == 0o640)
        #expect(c.mode("home/alice")! == (0o700, 1000, 1000))
        #expect(c.mode("home/alice/.ssh")! == (0o700, 1000, 1000))
        #expect(c.mode("home/alice/.ssh/authorized_keys")! == (0o600, 1000, 1000))
        #expect(c.text("home/alice/.ssh/authorized_keys") == key + "\n")
        #expect(c.text("home/alice/.profile") == "# ~/.profile\n")
        #expect(c.warnings.contains("no sshd"))
    }

    @Test("keys without --user go to root, after root's own")
    func rootKeys() throws {
        let c = try UserlandCase(
            SampleImage.systemd(extra: [.file("root/.ssh/authorized_keys", "ssh-rsa AAAAB3 old@key\n", mode: 0o600)])
        ) { $0.authorizedKeys = ["ssh-ed25519 AAAAnew new@key"] }
        #expect(c.text("root/.ssh/authorized_keys") == "ssh-rsa AAAAB3 old@key\nssh-ed25519 AAAAnew new@key\n")
        #expect(c.mode("root/.ssh")! == (0o700, 0, 0))
    }

    @Test("user names and key files are checked")
    func parsing() throws {
        #expect(UserAccount(parsing: "alice") == UserAccount(name: "alice"))
        #expect(UserAccount(parsing: "bob:pa:ss") == UserAccount(name: "bob", password: "pa:ss"))
        for bad in ["", "Alice", "1x", "-x", "root", "a b", String(repeating: "a", count: 33)] {
            #expect(UserAccount(parsing: bad) == nil, "\(bad)")
        }
        #expect(try AuthorizedKeys.parse("# mine\nssh-ed25519 AAAA me\n\n", file: "k.pub") == ["ssh-ed25519 AAAA me"])
        #expect(try AuthorizedKeys.parse(#"from="10.0.0.0/8" ecdsa-sha2-nistp256 AAAA"#, file: "k") == [#"from="10.0.0.0/8" ecdsa-sha2-nistp256 AAAA"#])
        #expect(throws: AuthorizedKeysError.self) { try AuthorizedKeys.parse("-----BEGIN OPENSSH PRIVATE KEY-----\n", file: "id") }
        #expect(throws: AuthorizedKeysError.self) { try AuthorizedKeys.parse("hello\n", file: "k") }
        #expect(throws: AuthorizedKeysError.self) { try AuthorizedKeys.parse("# nothing\n", file: "k") }
    }
}

@Suite("After boot: fstab and a growing root")
struct FstabAndGrowthTests {
    @Test("the image's own fstab entries are kept; / and /boot are d2l's; unknown devices are named")
    func merge() throws {
        let fstab = """
            # UNCONFIGURED FSTAB FOR BASE SYSTEM
            /dev/sda1 / ext4 defaults 0 1
            LABEL=boot /boot ext2 defaults 0 2
            tmpfs /tmp tmpfs nosuid,nodev 0 0
            /swapfile none swap sw 0 0
            /srv/data /var/data none bind 0 0
            UUID=dead-beef /data ext4 defaults 0 2
            /dev/vdb1 /scratch ext4 defaults,nofail 0 2

            """
        let c = try UserlandCase(SampleImage.systemd(extra: [.file("etc/fstab", fstab), .file("srv/data/x", "")]))
        let text = try #require(c.text("etc/fstab"))
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines[1] == "UUID=0a1b2c3d-0000-4000-8000-000000000001 / ext4 errors=remount-ro,x-systemd.growfs 0 0")
        #expect(lines[2] == "UUID=1234-ABCD /boot vfat umask=0077,nofail 0 0")
        #expect(!text.contains("UNCONFIGURED") && !text.contains("/dev/sda1") && !text.contains("LABEL=boot"))
        for kept in ["tmpfs /tmp tmpfs nosuid,nodev 0 0", "/swapfile none swap sw 0 0", "/srv/data /var/data none bind 0 0",
            "UUID=dead-beef /data ext4 defaults 0 2", "/dev/vdb1 /scratch ext4 defaults,nofail 0 2"]
        {
            #expect(lines.contains(kept), "\(kept)")
        }
        #expect(c.warnings.contains("entry for /data, but UUID=dead-beef is no file system of this disk: the boot will wait for it"))
        #expect(c.warnings.contains("entry for /scratch, but /dev/vdb1 is no partition of this disk (it has two: /boot and /) (it has nofail"))
        #expect(c.warnings.contains("entry for swap, but /swapfile is not in the image"))
        #expect(!c.warnings.contains("/var/data") && !c.warnings.contains("/tmp"))
    }

    @Test("a GPT disk with systemd grows its root with systemd-repart and x-systemd.growfs; MBR and OpenRC do not")
    func growth() throws {
        let gpt = try UserlandCase(SampleImage.systemd())
        #expect(gpt.text("etc/repart.d/50-d2l-root.conf")?.contains("Type=root") == true)
        #expect(gpt.text("etc/fstab")?.contains("x-systemd.growfs") == true)
        #expect(gpt.text("etc/systemd/system/systemd-growfs-root.service.d/d2l.conf")?.contains("After=systemd-remount-fs.service") == true)

        let mbr = try UserlandCase(SampleImage.systemd()) { $0.partitionTable = .mbr }
        #expect(mbr.file("etc/repart.d/50-d2l-root.conf") == nil)
        #expect(mbr.text("etc/fstab")?.contains("x-systemd.growfs") == false)

        let openrc = try UserlandCase(SampleImage.openrc())
        #expect(openrc.file("etc/repart.d/50-d2l-root.conf") == nil)
        #expect(openrc.text("etc/fstab")?.contains("x-systemd.growfs") == false)
    }
}

@Suite("After boot: the container's own service")
struct ContainerServiceTests {
    static let config = ContainerConfig(
        entrypoint: ["/bin/sh", "-c"], cmd: [#"echo "$GREETING 100%"; exec httpd -f"#], env: ["GREETING=hi \"there\""],
        workingDir: "/srv/www", user: "www-data", exposedPorts: ["8080/tcp"])

    @Test("systemd: the command as given (no expansion, no specifiers), its Env, WorkingDir and User, output to journal and console")
    func systemdUnit() throws {
        let c = try UserlandCase(SampleImage.systemd(extra: [TarEntry("bin/sh", .file([1]), mode: 0o755)])) {
            $0.containerConfig = Self.config
        }
        let unit = try #require(c.text("etc/systemd/system/d2l-container.service"))
        #expect(unit.contains(#"ExecStart="/bin/sh" "-c" "echo \"$$GREETING 100%%\"; exec httpd -f""#))
        #expect(unit.contains(#"Environment="GREETING=hi \"there\"""#))
        #expect(unit.contains("WorkingDirectory=/srv/www\n"))
        #expect(unit.contains("User=www-data\n"))
        #expect(unit.contains("StandardOutput=journal+console"))
        #expect(c.symlink("etc/systemd/system/multi-user.target.wants/d2l-container.service") == "/etc/systemd/system/d2l-container.service")
        // Docker makes a missing WorkingDir; so does d2l.
        #expect(c.file("srv/www").map { if case .directory = $0.content { true } else { false } } == true)
    }

    @Test("a program named without a path is looked up along the config's PATH")
    func pathLookup() throws {
        var config = ContainerConfig(cmd: ["httpd", "-f"], env: ["PATH=/opt/bin:/usr/bin"])
        let c = try UserlandCase(SampleImage.systemd(extra: [TarEntry("opt/bin/httpd", .file([1]), mode: 0o755)])) {
            $0.containerConfig = config
        }
        #expect(c.text("etc/systemd/system/d2l-container.service")?.contains(#"ExecStart="/opt/bin/httpd" "-f""#) == true)
        config.cmd = ["nosuch"]
        let missing = try UserlandCase(SampleImage.systemd()) { $0.containerConfig = config }
        #expect(missing.file("etc/systemd/system/d2l-container.service") == nil)
        #expect(missing.warnings.contains("nosuch is not in the image"))
    }

    @Test("only a shell, --no-container-service or no config: no service")
    func noService() throws {
        let shell = try UserlandCase(SampleImage.systemd()) { $0.containerConfig = ContainerConfig(cmd: ["bash"]) }
        #expect(shell.file("etc/systemd/system/d2l-container.service") == nil)
        #expect(shell.plan.notes.contains { $0.contains("only a shell (bash)") })
        let off = try UserlandCase(SampleImage.systemd(extra: [TarEntry("bin/sh", .file([1]), mode: 0o755)])) {
            $0.containerConfig = Self.config
            $0.containerService = false
        }
        #expect(off.file("etc/systemd/system/d2l-container.service") == nil)
        let unknownUser = try UserlandCase(SampleImage.systemd(extra: [TarEntry("bin/sh", .file([1]), mode: 0o755)])) {
            $0.containerConfig = ContainerConfig(cmd: ["/bin/sh", "-c", "x"], user: "nobody-here")
        }
        #expect(unknownUser.warnings.contains("User nobody-here is not in the image"))
    }

    @Test("OpenRC: a supervised service whose arguments and Env survive supervise-daemon's eval")
    func openrcService() throws {
        let c = try UserlandCase(
            SampleImage.openrc(extra: [
                TarEntry("bin/sh", .file([1]), mode: 0o755), TarEntry("usr/sbin/supervise-daemon", .file([1]), mode: 0o755),
                .file("etc/passwd", "root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\n"),
            ])
        ) { $0.containerConfig = Self.config }
        let script = try #require(c.text("etc/init.d/d2l-container"))
        #expect(c.mode("etc/init.d/d2l-container")?.0 == 0o755)
        #expect(script.hasPrefix("#!/sbin/openrc-run\n"))
        #expect(script.contains("command=/bin/sh\n"))
        #expect(script.contains("command_user=www-data\n"))
        #expect(script.contains("directory=/srv/www\n"))
        #expect(!script.contains("export "))  // an exported PATH would hide OpenRC's helpers from the script
        #expect(script.contains("supervisor=supervise-daemon\n"))
        let args = try #require(script.split(separator: "\n").first { $0.hasPrefix("supervise_daemon_args=") })
        #expect(try Self.shellWords(afterEval: String(args), variable: "supervise_daemon_args") == ["--env", #"GREETING=hi "there""#])
        #expect(c.symlink("etc/runlevels/default/d2l-container") == "/etc/init.d/d2l-container")
        // sh reads the assignment, then start-stop-daemon's eval splits it into the original words.
        let line = try #require(script.split(separator: "\n").first { $0.hasPrefix("command_args=") })
        let words = try Self.shellWords(afterEval: String(line), variable: "command_args")
        #expect(words == ["-c", #"echo "$GREETING 100%"; exec httpd -f"#])
    }

    @Test("OpenRC without supervise-daemon: start-stop-daemon in the background with a pidfile")
    func openrcStartStopDaemon() throws {
        let c = try UserlandCase(SampleImage.openrc(extra: [TarEntry("bin/sh", .file([1]), mode: 0o755)])) {
            $0.containerConfig = ContainerConfig(cmd: ["/bin/sh", "-c", "sleep 1d"], env: ["A=b"])
        }
        let script = try #require(c.text("etc/init.d/d2l-container"))
        #expect(script.contains("command_background=true\npidfile=/run/d2l-container.pid\n"))
        #expect(script.contains("start_stop_daemon_args='--env A=b'\n"))
        #expect(!script.contains("supervisor="))
    }

    /// Runs `LINE; eval "set -- $VARIABLE"` in sh and returns the positional parameters.
    static func shellWords(afterEval line: String, variable: String) throws -> [String] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", line + "\neval \"set -- $\(variable)\"\nfor w in \"$@\"; do printf '%s\\0' \"$w\"; done"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self).split(separator: "\0", omittingEmptySubsequences: false).dropLast().map(String.init)
    }

    @Test("BusyBox init runs no container service and says so")
    func busybox() throws {
        let c = try UserlandCase([
            TarEntry("bin/busybox", .file([1]), mode: 0o755), TarEntry("sbin/init", .symlink("/bin/busybox")),
            TarEntry("bin/sh", .symlink("/bin/busybox")),
        ]) { $0.containerConfig = ContainerConfig(cmd: ["/bin/sh", "-c", "httpd"]) }
        #expect(c.warnings.contains("needs systemd or OpenRC"))
    }
}
