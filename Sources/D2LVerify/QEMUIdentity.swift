import D2LSupport
import Foundation

/// The user and group QEMU runs as under libvirt's embedded driver.
///
/// Run by an ordinary user, QEMU runs as that user: it can do no more than d2l itself. Run as root,
/// QEMU runs as `libvirt-qemu` (the unprivileged system user Debian's libvirt packages and
/// `Scripts/install-deps` create, the one libvirt's QEMU driver is built to use), never as root, so
/// that a guest that escapes QEMU gets nothing but that user; QEMU's seccomp sandbox stays on
/// (libvirt's default `seccomp_sandbox = 1`, qemu.conf(5)). Such a QEMU is given only what it needs:
/// the image as a read-only file descriptor, and its own overlay, NVRAM and kernel copies in a
/// scratch directory it owns (`DomainScratch`).
public struct QEMUIdentity: Sendable, Equatable {
    /// The system user libvirt's QEMU driver runs QEMU as when libvirt runs as root.
    public static let systemUserName = "libvirt-qemu"

    /// The user and group ids QEMU runs with (qemu.conf's `user = "+UID"`, `group = "+GID"`).
    public var uid: uid_t
    public var gid: gid_t

    /// True when QEMU runs as someone other than this process (d2l is root, QEMU is not).
    public var isOtherThanSelf: Bool { uid != geteuid() }

    /// Who QEMU runs as for this process: `libvirt-qemu` when the effective user is root, else this process's user.
    ///
    /// - Throws: `VerifyError.hypervisor` when d2l is root and the `libvirt-qemu` user does not exist
    ///   (libvirt would refuse to start, and QEMU must not run as root).
    public static func forThisProcess() throws -> QEMUIdentity {
        guard geteuid() == 0 else { return QEMUIdentity(uid: geteuid(), gid: getegid()) }
        guard let entry = getpwnam(systemUserName) else {
            throw VerifyError.hypervisor(
                "run as root, d2l runs QEMU as the unprivileged user \(systemUserName), which does not exist here: "
                    + "run Scripts/install-deps, or groupadd --system \(systemUserName) && "
                    + "useradd --system -g \(systemUserName) -s /usr/sbin/nologin \(systemUserName)")
        }
        return QEMUIdentity(uid: entry.pointee.pw_uid, gid: entry.pointee.pw_gid)
    }

    /// Why QEMU, run as this identity, cannot open /dev/kvm although it exists; nil when it can (by
    /// owner, group or other permission bits; ACLs are not read) or when d2l's own user runs QEMU.
    ///
    /// Besides losing KVM, libvirt 9 then throws its QEMU capabilities away on every use (it probes
    /// with KVM, then finds KVM unusable for this user), which costs seconds per lookup.
    public var kvmAccessProblem: String? {
        guard isOtherThanSelf else { return nil }
        var info = stat()
        guard stat("/dev/kvm", &info) == 0 else { return nil }
        let bits: mode_t
        if info.st_uid == uid {
            bits = (info.st_mode >> 6) & 0o7
        } else if info.st_gid == gid || groups.contains(info.st_gid) {
            bits = (info.st_mode >> 3) & 0o7
        } else {
            bits = info.st_mode & 0o7
        }
        guard bits & 0o6 != 0o6 else { return nil }
        return "QEMU's user \(Self.systemUserName) cannot open /dev/kvm: Scripts/install-deps adds it to group kvm "
            + "and gives that group the device, as Debian's udev rule does"
    }

    /// The supplementary groups of the identity's user (getgrouplist(3)).
    private var groups: [gid_t] {
        guard let entry = getpwuid(uid) else { return [] }
        var count: Int32 = 64
        var list = [gid_t](repeating: 0, count: Int(count))
        guard getgrouplist(entry.pointee.pw_name, gid, &list, &count) >= 0 else { return [] }
        return Array(list.prefix(Int(count)))
    }
}

/// A boot's own directory of files QEMU may write: the qcow2 overlay that takes the guest's writes
/// (the image itself is never written), the UEFI NVRAM, and copies of a direct boot's kernel and
/// initrd. It is d2l's (mode 0711 when QEMU runs as another user: that user owns only the files), lives under /var/tmp (reachable by that user,
/// on disk rather than in memory), and is removed when the boot ends, SIGKILL included (`Cleanup`'s reaper).
public struct DomainScratch: Sendable {
    /// The directory, `/var/tmp/<domain name>`.
    public let path: String
    /// Who QEMU runs as: the files QEMU may write are given to this user.
    public let owner: QEMUIdentity

    /// The directory for the domain named `name`.
    ///
    /// - Throws: `VerifyError.hypervisor` when it cannot be made or given to the QEMU user.
    public static func create(for name: String, owner: QEMUIdentity, parent: String = "/var/tmp") throws -> DomainScratch {
        let path = parent + "/" + name
        // The directory stays d2l's: QEMU's user may pass through it (0711) and write the files given to
        // it, but cannot add, rename or replace a name in it, so nothing d2l writes there as root can be
        // redirected by that user (a symlink planted where the overlay goes).
        let mode: mode_t = owner.isOtherThanSelf ? 0o711 : 0o700
        guard mkdir(path, mode) == 0 else {
            throw VerifyError.hypervisor("cannot make \(path): \(String(cString: strerror(errno)))")
        }
        Cleanup.shared.add(path)
        chmod(path, mode)  // past the umask
        return DomainScratch(path: path, owner: owner)
    }

    /// Gives `path` to the QEMU user (a no-op when QEMU runs as this process's user).
    func hand(_ path: String) throws {
        guard owner.isOtherThanSelf else { return }
        guard lchown(path, owner.uid, owner.gid) == 0 else {
            throw VerifyError.hypervisor("cannot give \(path) to QEMU's user: \(String(cString: strerror(errno)))")
        }
    }

    /// A qcow2 overlay backed by the image (in `format`), made with `qemu-img create`, owned by the QEMU user.
    /// QEMU does not open the backing file's path: the domain gives it the image's file descriptor instead.
    ///
    /// - Throws: `VerifyError.hypervisor` with qemu-img's message.
    func makeOverlay(backing image: String, format: String) async throws -> String {
        let overlay = path + "/disk.qcow2"
        do {
            try await ProcessRunner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", format, "-b", image, overlay])
        } catch let error as ProcessError {
            throw VerifyError.hypervisor("cannot make the boot's overlay with qemu-img: \(error.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        try hand(overlay)
        return overlay
    }

    /// A copy of `file` named `name` in the directory, owned by the QEMU user (NVRAM templates, kernels, initrds).
    ///
    /// - Throws: `VerifyError.hypervisor` when it cannot be copied.
    func copy(_ file: String, as name: String) throws -> String {
        let target = path + "/" + name
        // The file's contents, never a symlink to it: QEMU could not follow it, and chown would give away its target.
        let source = URL(fileURLWithPath: file).resolvingSymlinksInPath().path
        do {
            try FileManager.default.copyItem(atPath: source, toPath: target)
        } catch {
            throw VerifyError.hypervisor("cannot copy \(file) for QEMU: \(error.localizedDescription)")
        }
        try hand(target)
        return target
    }

    /// Removes the directory and everything in it.
    public func remove() {
        try? FileManager.default.removeItem(atPath: path)
        Cleanup.shared.remove(path)
    }
}
