import D2LImage
import D2LSupport
import Foundation

/// A user `d2l build --user NAME[:PASSWORD]` creates (or finds) in the image.
public struct UserAccount: Sendable, Equatable {
    public var name: String
    /// nil: no password (log in with a key); stored as a SHA-512 crypt hash otherwise.
    public var password: String?

    public init(name: String, password: String? = nil) {
        self.name = name
        self.password = password
    }

    /// Parses `NAME` or `NAME:PASSWORD`; nil when NAME is not a portable user name (lower-case
    /// letters, digits, `_` and `-`, not starting with a digit or `-`, at most 32 characters).
    public init?(parsing text: String) {
        let name: String
        var password: String?
        if let colon = text.firstIndex(of: ":") {
            name = String(text[..<colon])
            password = String(text[text.index(after: colon)...])
        } else {
            name = text
        }
        guard Self.isValidName(name), name != "root" else { return nil }
        self.init(name: name, password: password)
    }

    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, name.count <= 32 else { return false }
        let allowed = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyz0123456789_-")
        return (first == "_" || ("a"..."z").contains(first)) && name.unicodeScalars.allSatisfy(allowed.contains)
    }
}

/// Public keys for `~/.ssh/authorized_keys` (`--ssh-authorized-key FILE`).
public enum AuthorizedKeys {
    /// Key types sshd accepts in authorized_keys.
    static let keyTypes = ["ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-"]

    /// The key lines of an authorized_keys or .pub file (comments and blank lines dropped).
    ///
    /// - Throws: a message saying what is wrong (a private key, no key at all, a line that is no key).
    public static func parse(_ text: String, file: String) throws(AuthorizedKeysError) -> [String] {
        if text.contains("PRIVATE KEY") {
            throw AuthorizedKeysError(message: "\(file) is a private key: give its public half (\(file).pub)")
        }
        var keys: [String] = []
        for line in text.split(whereSeparator: \.isNewline).map({ $0.trimmingCharacters(in: .whitespaces) })
        where !line.isEmpty && !line.hasPrefix("#") {
            // A key may follow options (`from="10.0.0.0/8",no-pty ssh-ed25519 AAAA...`).
            let words = line.split(separator: " ").map(String.init)
            guard words.contains(where: { word in keyTypes.contains { word.hasPrefix($0) } }) else {
                throw AuthorizedKeysError(message: "\(file): \"\(line.prefix(40))\" is not an SSH public key (ssh-ed25519 AAAA...)")
            }
            keys.append(line)
        }
        guard !keys.isEmpty else { throw AuthorizedKeysError(message: "\(file) holds no SSH public key") }
        return keys
    }
}

/// A file given to `--ssh-authorized-key` that holds no usable public key.
public struct AuthorizedKeysError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { message }
}

/// Edits /etc/passwd, /etc/shadow, /etc/group and /etc/gshadow as useradd would, and lays
/// authorized_keys with the owner and modes sshd's StrictModes demands (the home and ~/.ssh not
/// writable by others, ~/.ssh 0700, authorized_keys 0600).
struct UserAccounts {
    /// Days since the epoch, for shadow's "last changed" field.
    var days: Int64
    var salt: String

    struct PasswdEntry {
        var name: String
        var uid: UInt32
        var gid: UInt32
        var home: String
    }

    static func passwdEntries(_ text: String) -> [PasswdEntry] {
        text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard f.count >= 7, let uid = UInt32(f[2]), let gid = UInt32(f[3]) else { return nil }
            return PasswdEntry(name: f[0], uid: uid, gid: gid, home: f[5])
        }
    }

    /// The lowest id from 1000 below 60000 that none of `used` has (useradd's default range).
    static func freeID(_ used: Set<UInt32>, preferring preferred: UInt32? = nil) -> UInt32 {
        if let preferred, !used.contains(preferred) { return preferred }
        var id: UInt32 = 1000
        while used.contains(id), id < 60000 { id += 1 }
        return id
    }

    /// - Throws: `DiskError.tool` when crypt(3) cannot hash the password.
    func hash(_ password: String, for name: String) throws -> String {
        guard let hash = PasswordHash.sha512Crypt(password, salt: String(SHA256Hasher.hex(Data((salt + name).utf8)).prefix(16))) else {
            throw DiskError.tool("crypt(3) could not make a SHA-512 password hash")
        }
        return hash
    }

    /// Creates `account` unless it exists (then sets its password when one is given), with a home
    /// made from /etc/skel and, where the image has sudo, membership of its sudo group.
    ///
    /// - Returns: the account's passwd entry.
    /// - Throws: `DiskError.tool` when crypt(3) fails.
    func ensure(_ account: UserAccount, in image: inout ImageEditor) throws -> PasswdEntry {
        let passwd = image.text("etc/passwd") ?? ""
        let group = image.text("etc/group") ?? ""
        let users = Self.passwdEntries(passwd)
        let field = try account.password.map { try hash($0, for: account.name) }
        if let existing = users.first(where: { $0.name == account.name }) {
            if let field { setShadowPassword(of: account.name, to: field, in: &image) }
            image.note("users: \(account.name) exists in the image (uid \(existing.uid))" + (field != nil ? "; its password set" : ""))
            addToSudoGroup(account.name, in: &image)
            return existing
        }
        let groups = Self.groupEntries(group)
        let uid = Self.freeID(Set(users.map(\.uid)))
        let gid: UInt32
        if let own = groups.first(where: { $0.name == account.name }) {
            gid = own.gid
        } else {
            gid = Self.freeID(Set(groups.map(\.gid)), preferring: uid)
            image.write("etc/group", Self.appending("\(account.name):x:\(gid):", to: group), keepOwnerAndMode: true)
            if let gshadow = image.text("etc/gshadow") {
                image.write("etc/gshadow", Self.appending("\(account.name):!::", to: gshadow), keepOwnerAndMode: true)
            }
        }
        let shell = image.exists("bin/bash") ? "/bin/bash" : "/bin/sh"
        let home = "/home/" + account.name
        image.write("etc/passwd", Self.appending("\(account.name):x:\(uid):\(gid)::\(home):\(shell)", to: passwd), keepOwnerAndMode: true)
        // "*" and not "!": with UsePAM no, OpenSSH takes a "!" password as a locked account and refuses keys too.
        setShadowPassword(of: account.name, to: field ?? "*", in: &image)

        image.parents(of: String(home.dropFirst()))
        image.directory(String(home.dropFirst()), mode: 0o700, uid: uid, gid: gid)
        for name in Self.skeletonFiles {
            if let text = image.text("etc/skel/" + name) {
                image.write(String(home.dropFirst()) + "/" + name, text, mode: 0o644, uid: uid, gid: gid)
            }
        }
        image.note("users: created \(account.name) (uid \(uid), home \(home), shell \(shell))" + (field != nil ? " with a password" : ""))
        addToSudoGroup(account.name, in: &image)
        return PasswdEntry(name: account.name, uid: uid, gid: gid, home: home)
    }

    /// The files of /etc/skel that d2l reads (BootFacts.capturePaths holds them).
    static let skeletonFiles = [".bashrc", ".profile", ".bash_logout"]

    struct GroupEntry {
        var name: String
        var gid: UInt32
    }

    static func groupEntries(_ text: String) -> [GroupEntry] {
        text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard f.count >= 3, let gid = UInt32(f[2]) else { return nil }
            return GroupEntry(name: f[0], gid: gid)
        }
    }

    static func appending(_ line: String, to text: String) -> String {
        text + (text.isEmpty || text.hasSuffix("\n") ? "" : "\n") + line + "\n"
    }

    /// Sets the password field of `name` in /etc/shadow (adding its line, or the file, when missing).
    func setShadowPassword(of name: String, to field: String, in image: inout ImageEditor) {
        let shadow = image.text("etc/shadow")
        var lines = (shadow ?? "").split(separator: "\n").map(String.init)
        if let index = lines.firstIndex(where: { $0.hasPrefix(name + ":") }) {
            var parts = lines[index].split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            while parts.count < 9 { parts.append("") }
            parts[1] = field
            parts[2] = String(days)
            lines[index] = parts.joined(separator: ":")
        } else {
            lines.append("\(name):\(field):\(days):0:99999:7:::")
        }
        let shadowGroup = Self.groupEntries(image.text("etc/group") ?? "").first { $0.name == "shadow" }?.gid
        image.write(
            "etc/shadow", lines.joined(separator: "\n") + "\n", mode: shadowGroup == nil ? 0o600 : 0o640, gid: shadowGroup ?? 0,
            keepOwnerAndMode: shadow != nil)
    }

    /// Adds `name` to the group sudo lets in (`sudo` on Debian and Ubuntu, `wheel` elsewhere), when
    /// the image has sudo.
    func addToSudoGroup(_ name: String, in image: inout ImageEditor) {
        guard image.program("sudo") != nil else { return }
        let group = image.text("etc/group") ?? ""
        guard let admin = ["sudo", "wheel"].first(where: { g in group.split(separator: "\n").contains { $0.hasPrefix(g + ":") } }) else {
            image.warn("users: the image has sudo but no sudo or wheel group: \(name) cannot use sudo")
            return
        }
        image.write("etc/group", Self.addMember(name, toGroup: admin, in: group, memberField: 3), keepOwnerAndMode: true)
        if let gshadow = image.text("etc/gshadow") {
            image.write("etc/gshadow", Self.addMember(name, toGroup: admin, in: gshadow, memberField: 3), keepOwnerAndMode: true)
        }
        image.note("users: \(name) is in the \(admin) group (sudo)")
    }

    /// Adds `name` to the member list (field `memberField`) of `group`'s line.
    static func addMember(_ name: String, toGroup group: String, in text: String, memberField: Int) -> String {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for (i, line) in lines.enumerated() where line.hasPrefix(group + ":") {
            var parts = line.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            while parts.count <= memberField { parts.append("") }
            var members = parts[memberField].split(separator: ",").map(String.init)
            if !members.contains(name) { members.append(name) }
            parts[memberField] = members.joined(separator: ",")
            lines[i] = parts.joined(separator: ":")
        }
        return lines.joined(separator: "\n")
    }

    /// Adds `keys` to the user's ~/.ssh/authorized_keys (keeping the image's own keys there).
    func authorize(_ keys: [String], for user: PasswdEntry, in image: inout ImageEditor) {
        guard !keys.isEmpty else { return }
        let home = String(user.home.drop { $0 == "/" })
        if !image.exists(home) {
            image.parents(of: home)
            image.directory(home, mode: 0o700, uid: user.uid, gid: user.gid)
        } else if let node = image.tree.resolve(ImagePath(home))?.1, node.metadata.permissions & 0o022 != 0 {
            image.warn("ssh: \(user.home) is writable by others, so sshd (StrictModes) will refuse \(user.name)'s keys")
        }
        let existing = image.text(home + "/.ssh/authorized_keys") ?? ""
        var lines = existing.split(separator: "\n").map(String.init)
        for key in keys where !lines.contains(key) { lines.append(key) }
        image.directory(home + "/.ssh", mode: 0o700, uid: user.uid, gid: user.gid)
        image.write(home + "/.ssh/authorized_keys", lines.joined(separator: "\n") + "\n", mode: 0o600, uid: user.uid, gid: user.gid)
        image.note("ssh: \(keys.count) authorized key(s) for \(user.name) in \(user.home)/.ssh/authorized_keys")
        if image.program("sshd") == nil {
            image.warn("ssh: the image has no sshd, so the authorized keys cannot be used: install openssh-server")
        }
    }
}
