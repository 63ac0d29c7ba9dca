import D2LDiskModel
import D2LImage

/// How the disk's first Ethernet NIC is configured at boot (`d2l build --network`).
public enum NetworkMode: String, Sendable, CaseIterable, Codable {
    /// An address, a default route and DNS servers by DHCP, with what the image has.
    case dhcp
    /// Nothing configured; a resolv.conf the build left behind is still replaced.
    case none
}

/// Configures DHCP on the first Ethernet NIC with the image's own tools: systemd-networkd (and
/// systemd-resolved when present) on systemd images, ifupdown with a DHCP client on sysvinit and
/// OpenRC images, udhcpc on BusyBox. Never copies the build host's settings: a resolv.conf the
/// image carries from the machine it was built on is replaced.
enum NetworkSetup {
    /// The .network file: every physical Ethernet NIC (whatever udev names it) by DHCP.
    static let networkdFile = """
        # Written by d2l build (--network dhcp): Ethernet NICs, whatever udev names them, by DHCP.
        [Match]
        Type=ether

        [Network]
        DHCP=yes

        [DHCPv4]
        UseDomains=yes

        """

    static func apply(_ mode: NetworkMode, initSystem: InitSystem, to image: inout ImageEditor) {
        switch mode {
        case .none:
            replaceResolvConf(
                in: &image,
                with: "# Written by d2l build (--network none): no network is configured, so no resolver either.\n",
                keepRunSymlink: false)
            image.note("network: none configured (--network none)")
        case .dhcp:
            switch initSystem {
            case .systemd: systemd(&image)
            case .openrc, .sysvinit: ifupdown(&image, initSystem: initSystem)
            case .busybox: busybox(&image)
            case .unknown:
                replaceResolvConf(in: &image, with: placeholderResolvConf(by: "nothing"), keepRunSymlink: true)
                image.warn("network: the init system is not known, so no DHCP is configured: configure the network in the image")
            }
        }
    }

    static func placeholderResolvConf(by client: String) -> String {
        "# Written by d2l build: \(client) writes the DHCP server's resolvers here at boot.\n"
    }

    /// Replaces /etc/resolv.conf unless it is a symlink into /run that something in the image
    /// keeps up to date (systemd-resolved's stub, resolvconf): `keepRunSymlink`.
    static func replaceResolvConf(in image: inout ImageEditor, with text: String, keepRunSymlink: Bool) {
        if keepRunSymlink, let target = runSymlinkTarget(image) {
            image.note("network: /etc/resolv.conf kept: a symlink to \(target)")
            return
        }
        image.write("etc/resolv.conf", text)
    }

    /// The target of /etc/resolv.conf when it is a symlink into /run.
    static func runSymlinkTarget(_ image: ImageEditor) -> String? {
        guard let node = image.node("etc/resolv.conf"), let raw = node.symlinkTarget else { return nil }
        let target = String(decoding: raw, as: UTF8.self)
        return target.hasPrefix("/run/") || target.hasPrefix("../run/") || target.hasPrefix("/var/run/")
            || target.hasPrefix("../var/run/") ? target : nil
    }

    // MARK: systemd

    private static func systemd(_ image: inout ImageEditor) {
        guard let networkd = image.systemdProgram("systemd-networkd"),
            let networkdUnit = image.systemdUnit("systemd-networkd.service")
        else {
            if image.program("ifup") != nil {
                ifupdown(&image, initSystem: .systemd)
                return
            }
            replaceResolvConf(in: &image, with: placeholderResolvConf(by: "nothing"), keepRunSymlink: true)
            image.warn(
                "network: the image has no systemd-networkd and no ifupdown, so no DHCP is configured: install "
                    + "systemd-networkd (Debian 13: systemd-networkd; Debian 12: part of systemd) or ifupdown and isc-dhcp-client")
            return
        }
        _ = networkd
        image.parents(of: "etc/systemd/network/80-d2l-dhcp.network")
        image.write("etc/systemd/network/80-d2l-dhcp.network", networkdFile)
        image.enableSystemdUnit("systemd-networkd.service", unitFile: networkdUnit, wantedBy: "multi-user.target")
        if let socket = image.systemdUnit("systemd-networkd.socket") {
            image.enableSystemdUnit("systemd-networkd.socket", unitFile: socket, wantedBy: "sockets.target")
        }
        // network-online.target waits for the DHCP lease, but only when there is an Ethernet NIC to
        // wait for: with none, wait-online would stall the boot for 2 minutes and then fail.
        if let waitOnline = image.systemdUnit("systemd-networkd-wait-online.service"),
            let program = image.systemdProgram("systemd-networkd-wait-online")
        {
            image.enableSystemdUnit(
                "systemd-networkd-wait-online.service", unitFile: waitOnline, wantedBy: "network-online.target")
            image.parents(of: "etc/systemd/system/systemd-networkd-wait-online.service.d/d2l.conf")
            image.write(
                "etc/systemd/system/systemd-networkd-wait-online.service.d/d2l.conf",
                """
                # Written by d2l build: wait for one NIC's DHCP lease, and only when there is an Ethernet NIC
                # at all (udev names them en* or eth*); a machine with none does not stall its boot.
                [Unit]
                ConditionPathExistsGlob=/sys/class/net/e*

                [Service]
                ExecStart=
                ExecStart=\(program) --any --timeout=60

                """)
        }
        if let resolved = image.systemdUnit("systemd-resolved.service") {
            image.enableSystemdUnit("systemd-resolved.service", unitFile: resolved, wantedBy: "multi-user.target")
            image.symlink("etc/systemd/system/dbus-org.freedesktop.resolve1.service", to: resolved)
            if let target = runSymlinkTarget(image) {
                image.note("network: DHCP through systemd-networkd, DNS through systemd-resolved (/etc/resolv.conf kept: a symlink to \(target))")
            } else {
                image.symlink("etc/resolv.conf", to: "../run/systemd/resolve/stub-resolv.conf")
                image.note("network: DHCP through systemd-networkd, DNS through systemd-resolved (/etc/resolv.conf: its stub)")
            }
            return
        }
        // No systemd-resolved: networkd keeps the DHCP server's DNS servers in its lease files only.
        // A path unit copies them into /etc/resolv.conf whenever a lease changes.
        image.write("etc/resolv.conf", placeholderResolvConf(by: "d2l-resolv-conf.service (from systemd-networkd's leases)"))
        image.installSystemdUnit(
            "d2l-resolv-conf.service",
            """
            # Written by d2l build: the image has systemd-networkd but no systemd-resolved, so the DNS
            # servers of its DHCP leases are written to /etc/resolv.conf from here.
            [Unit]
            Description=Resolvers from systemd-networkd's DHCP leases to /etc/resolv.conf (d2l)
            ConditionPathIsReadWrite=/etc

            [Service]
            Type=oneshot
            ExecStart=/bin/sh -c 'for f in /run/systemd/netif/leases/*; do [ -f "$$f" ] && sed -n "s/^DNS=//p; s/^DOMAINNAME=/search /p" "$$f"; done | { while read -r first rest; do case "$$first" in search) echo "search $$rest" ;; *) for a in $$first $$rest; do echo "nameserver $$a"; done ;; esac; done; } > /etc/.resolv.conf.d2l && mv /etc/.resolv.conf.d2l /etc/resolv.conf'

            """, wantedBy: [])
        image.installSystemdUnit(
            "d2l-resolv-conf.path",
            """
            # Written by d2l build: see d2l-resolv-conf.service.
            [Unit]
            Description=Watch systemd-networkd's DHCP leases for resolvers (d2l)

            [Path]
            PathChanged=/run/systemd/netif/leases

            [Install]
            WantedBy=multi-user.target

            """, wantedBy: ["multi-user.target"])
        image.note("network: DHCP through systemd-networkd; its DNS servers go to /etc/resolv.conf through d2l-resolv-conf.path")
        image.warn(
            "network: the image has no systemd-resolved, so d2l copies the DHCP lease's DNS servers into /etc/resolv.conf "
                + "itself: install systemd-resolved (Debian 12 and later) for a resolver that follows the network")
    }

    // MARK: ifupdown

    /// DHCP clients ifupdown can drive, in the order it tries them, with the package that has each.
    static let dhcpClients: [(program: String, package: String)] = [
        ("dhclient", "isc-dhcp-client"), ("pump", "pump"), ("udhcpc", "udhcpc"), ("dhcpcd", "dhcpcd-base"),
    ]

    private static func ifupdown(_ image: inout ImageEditor, initSystem: InitSystem) {
        let client = dhcpClients.first { image.program($0.program) != nil }
        guard image.program("ifup") != nil, let client else {
            let missing = image.program("ifup") == nil ? "ifupdown and a DHCP client (isc-dhcp-client)" : "a DHCP client (isc-dhcp-client)"
            replaceResolvConf(in: &image, with: placeholderResolvConf(by: "nothing"), keepRunSymlink: true)
            image.warn("network: the image has no way to do DHCP, so none is configured: install \(missing) in the image")
            return
        }
        let stanza = """
            # Written by d2l build (--network dhcp): the first Ethernet NIC, whatever it is named (eth0, ens3,
            # enp1s0), by DHCP: at boot when it is there (auto), or when it appears (allow-hotplug).
            auto /e*/1=d2l-ether
            allow-hotplug /e*/1=d2l-ether
            iface d2l-ether inet dhcp

            """
        let interfaces = image.text("etc/network/interfaces")
        if let interfaces, interfaces.split(separator: "\n").contains(where: { $0.hasPrefix("source") && $0.contains("interfaces.d") }) {
            image.write("etc/network/interfaces.d/d2l", stanza)
        } else {
            let base = interfaces ?? "auto lo\niface lo inet loopback\n"
            image.write("etc/network/interfaces", base + (base.hasSuffix("\n") ? "\n" : "\n\n") + stanza, keepOwnerAndMode: true)
        }
        // ifupdown's package enables its `networking` service; an image that removed the link gets it back.
        if initSystem == .openrc, image.exists("etc/init.d/networking"), !image.openRCServiceEnabled("networking") {
            image.enableOpenRCService("networking", runlevel: "boot")
        }
        replaceResolvConf(in: &image, with: placeholderResolvConf(by: client.program), keepRunSymlink: true)
        image.note("network: DHCP through ifupdown and \(client.program) on the first Ethernet NIC")
    }

    // MARK: BusyBox

    /// udhcpc's event script: address, default route and resolvers from the lease.
    static let udhcpcScript = """
        #!/bin/sh
        # Written by d2l build: applies udhcpc's lease ($interface, $ip, $mask, $router, $dns, $domain).
        case "$1" in
          deconfig)
            ip -4 addr flush dev "$interface"
            ip link set "$interface" up
            ;;
          bound|renew)
            ip -4 addr flush dev "$interface"
            ip -4 addr add "$ip/${mask:-24}" dev "$interface"
            for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
            { [ -n "$domain" ] && echo "search $domain"; for d in $dns; do echo "nameserver $d"; done; } > /etc/resolv.conf
            ;;
        esac
        exit 0

        """

    /// Starts udhcpc on the first Ethernet NIC (type 1 with a device behind it), in the background.
    static let busyboxNetworkScript = """
        #!/bin/sh
        # Written by d2l build (--network dhcp): DHCP on the first Ethernet NIC, in the background.
        ip link set lo up
        for dev in /sys/class/net/*; do
          [ -e "$dev/device" ] && [ "$(cat "$dev/type")" = 1 ] || continue
          udhcpc -b -t 5 -T 2 -i "${dev##*/}" -s /etc/udhcpc/d2l.script
          break
        done

        """

    private static func busybox(_ image: inout ImageEditor) {
        guard image.program("udhcpc") != nil, image.program("ip") != nil else {
            replaceResolvConf(in: &image, with: placeholderResolvConf(by: "nothing"), keepRunSymlink: true)
            image.warn("network: the image's BusyBox has no udhcpc or ip applet, so no DHCP is configured: build BusyBox with them (Debian: busybox)")
            return
        }
        image.parents(of: "etc/udhcpc/d2l.script")
        image.write("etc/udhcpc/d2l.script", udhcpcScript, mode: 0o755)
        image.parents(of: "etc/init.d/d2l-network")
        image.write("etc/init.d/d2l-network", busyboxNetworkScript, mode: 0o755)
        let inittab = image.text("etc/inittab") ?? ""
        if !inittab.contains("/etc/init.d/d2l-network") {
            image.write(
                "etc/inittab",
                inittab + (inittab.hasSuffix("\n") || inittab.isEmpty ? "" : "\n")
                    + "# Added by d2l build: DHCP on the first Ethernet NIC.\n::sysinit:/etc/init.d/d2l-network\n",
                keepOwnerAndMode: true)
        }
        replaceResolvConf(in: &image, with: placeholderResolvConf(by: "udhcpc"), keepRunSymlink: true)
        image.note("network: DHCP through udhcpc on the first Ethernet NIC (from /etc/inittab)")
    }
}
