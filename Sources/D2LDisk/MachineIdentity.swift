import D2LDiskModel
import D2LImage

/// Per-machine state: nothing the build made that identifies a machine survives into the disk, so
/// that every VM made from it is a machine of its own. What the image needs again is made at first
/// boot: systemd writes a new machine ID into the empty /etc/machine-id, and SSH host keys are
/// generated before sshd starts.
enum MachineIdentity {
    /// Files that hold one machine's identity or secrets, made when the image was built: removed.
    static let perMachineFiles: [String] = [
        "var/lib/systemd/random-seed",  // systemd-random-seed: the seed must differ per machine
        "var/lib/urandom/random-seed",  // sysvinit's urandom script
        "var/lib/systemd/credential.secret",  // systemd-creds' host key
        "var/lib/NetworkManager/secret_key",  // NetworkManager's stable-privacy address key
        "etc/hostid",
    ]

    /// Directories whose every file of a name pattern is per-machine: SSH host keys, DHCP leases.
    static let perMachinePatterns: [(directory: String, prefix: String, suffix: String)] = [
        ("etc/ssh", "ssh_host_", ""),
        ("etc/dropbear", "dropbear_", "_host_key"),
        ("var/lib/dhcp", "", ".leases"),
        ("var/lib/dhcpcd", "", ".lease"),
    ]

    static func apply(initSystem: InitSystem, to image: inout ImageEditor) {
        // systemd takes an empty /etc/machine-id as "make one at first boot"; an empty file (not a
        // missing one) also lets it be written on a root that is still read-only.
        var machineID = SyntheticFile(path: "etc/machine-id", content: .file([]), permissions: 0o444, mtime: image.mtime)
        machineID.path = image.realPath("etc/machine-id")
        image.add(machineID)
        // With /etc/machine-id empty, systemd falls back to D-Bus's copy: a regular file there would
        // bring the build's ID back. Point it at /etc/machine-id, as Debian's dbus does on systemd systems.
        if let dbus = image.node("var/lib/dbus/machine-id"), dbus.kind != .symlink {
            image.symlink("var/lib/dbus/machine-id", to: "/etc/machine-id")
        }
        var removed: [String] = []
        for path in perMachineFiles where image.node(path) != nil {
            image.remove(path)
            removed.append("/" + path)
        }
        var hostKeys = false
        for pattern in perMachinePatterns {
            guard let dir = image.node(pattern.directory), dir.kind == .directory else { continue }
            for name in dir.children.keys.map({ String(decoding: $0, as: UTF8.self) }).sorted()
            where name.hasPrefix(pattern.prefix) && name.hasSuffix(pattern.suffix) && dir.children[ImagePath(name)]?.kind != .directory {
                image.remove(pattern.directory + "/" + name)
                removed.append("/\(pattern.directory)/\(name)")
                if pattern.directory == "etc/ssh" { hostKeys = true }
            }
        }
        if !removed.isEmpty {
            image.note("identity: removed the build's per-machine state: \(removed.joined(separator: ", "))")
        }
        if image.program("sshd") != nil {
            sshHostKeysAtBoot(initSystem: initSystem, removedKeys: hostKeys, to: &image)
        }
    }

    /// Makes missing SSH host keys before sshd starts (`ssh-keygen -A` makes only the missing ones).
    private static func sshHostKeysAtBoot(initSystem: InitSystem, removedKeys: Bool, to image: inout ImageEditor) {
        guard let keygen = image.program("ssh-keygen") else {
            image.warn("ssh: the image has sshd but no ssh-keygen, so no host keys can be made at boot: install openssh-client")
            return
        }
        switch initSystem {
        case .systemd:
            // Debian's ssh.service refuses to start without host keys and does not make them.
            // The unit as packaged (ssh.service on Debian, sshd.service elsewhere), not an alias of it in /etc.
            let sshUnits = ["ssh.service", "sshd.service"].filter {
                image.firstExisting(["usr/lib/systemd/system/" + $0, "lib/systemd/system/" + $0]) != nil
            }
            image.installSystemdUnit(
                "d2l-ssh-host-keys.service",
                """
                # Written by d2l build: this machine's own SSH host keys, made at its first boot (the
                # image's were removed so that machines made from one disk do not share them).
                [Unit]
                Description=SSH host keys of this machine (d2l)
                Before=ssh.service sshd.service ssh.socket sshd.socket
                ConditionPathIsReadWrite=/etc/ssh

                [Service]
                Type=oneshot
                ExecStart=\(keygen) -A
                # An RSA key takes tens of seconds of CPU under emulation: only what the boot leaves idle.
                CPUSchedulingPolicy=idle
                IOSchedulingClass=idle

                [Install]
                WantedBy=multi-user.target

                """, wantedBy: ["multi-user.target"] + sshUnits)
        case .openrc:
            image.installOpenRCService(
                "d2l-ssh-host-keys",
                """
                #!/sbin/openrc-run
                # Written by d2l build: this machine's own SSH host keys, made at its first boot.
                description="SSH host keys of this machine (d2l)"

                depend() {
                \tafter localmount
                \tbefore ssh sshd
                }

                start() {
                \tebegin "Making this machine's SSH host keys"
                \t\(keygen) -A
                \teend $?
                }

                """, runlevel: "default")
        case .sysvinit, .busybox:
            // After the inittab's own sysinit entries (the root is writable by then), before any runlevel.
            let inittab = image.text("etc/inittab") ?? ""
            let entry = initSystem == .busybox ? "::sysinit:\(keygen) -A" : "d2lk::sysinit:\(keygen) -A"
            if !inittab.contains(entry) {
                image.write(
                    "etc/inittab",
                    inittab + (inittab.hasSuffix("\n") || inittab.isEmpty ? "" : "\n")
                        + "# Added by d2l build: this machine's own SSH host keys, made at boot.\n" + entry + "\n",
                    keepOwnerAndMode: true)
            }
        case .unknown:
            image.warn("ssh: the init system is not known, so nothing makes SSH host keys at boot: run `ssh-keygen -A` before sshd")
            return
        }
        image.note("ssh: host keys are made at first boot (`ssh-keygen -A`)" + (removedKeys ? "; the build's were removed" : ""))
    }
}
