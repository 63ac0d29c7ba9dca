/// The init system an image boots with; it decides what the verifier's init stage looks for
/// and what the builder adds so that a login prompt appears on the serial console.
public enum InitSystem: String, Sendable, Codable, CaseIterable {
    case systemd, openrc, sysvinit, busybox, unknown

    /// Decides the init system from what `/sbin/init` (or `--init`) leads to.
    ///
    /// - Parameters:
    ///   - initChain: the paths the init passes through while its symlinks are followed, inside
    ///     the image (`["/sbin/init", "/lib/systemd/systemd"]`); empty when there is no init.
    ///   - inittab: the text of `/etc/inittab`, nil when the image has none.
    ///   - hasOpenRC: whether `/sbin/openrc` exists.
    public static func classify(initChain: [String], inittab: String?, hasOpenRC: Bool) -> InitSystem {
        guard !initChain.isEmpty else { return .unknown }
        if initChain.contains(where: { $0.contains("systemd") }) { return .systemd }
        if initChain.contains(where: { $0.hasSuffix("/busybox") || $0 == "busybox" }) { return .busybox }
        if initChain.contains(where: { $0.hasSuffix("openrc-init") }) { return .openrc }
        guard let inittab, !inittab.isEmpty else { return .unknown }
        // sysvinit's /sbin/init reads inittab; OpenRC runs from it (Debian's sysvinit-core + openrc).
        return inittab.contains("openrc") || hasOpenRC ? .openrc : .sysvinit
    }
}
