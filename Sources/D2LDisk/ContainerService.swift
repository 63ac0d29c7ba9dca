import D2LDiskModel
import D2LImage

/// The container's own command (the image config's Entrypoint and Cmd, with its Env, WorkingDir and
/// User) as a service that starts at boot: a systemd unit on systemd images, an OpenRC service on
/// OpenRC images. Its output goes to the journal (systemd) and the console.
public struct ContainerService: Sendable, Equatable, Codable {
    /// The service's name: `d2l-container.service` under systemd, `/etc/init.d/d2l-container` under OpenRC.
    public static let name = "d2l-container"

    /// The command as it will run: the program resolved to an absolute path in the image.
    public var command: [String]
    /// The config's Env, `NAME=VALUE` each.
    public var environment: [String]
    /// The config's WorkingDir, `/` when it names none.
    public var workingDirectory: String
    /// The config's User (a name or a uid), nil for root.
    public var user: String?
    /// The group after the colon of the config's User, when it names one.
    public var group: String?
    /// The config's ExposedPorts (`8080/tcp`): shown, not opened (the guest has no firewall d2l knows of).
    public var exposedPorts: [String]

    /// What the build does with an image's config: a service, or why not.
    public enum Decision: Sendable, Equatable {
        case service(ContainerService)
        /// No service, and why (for `d2l inspect` and the build log).
        case none(String)
        /// No service because something is wrong that the user should fix (a warning in the build).
        case problem(String)
    }

    /// Decides what `config` becomes on an image with `initSystem`; `enabled` is false for `--no-container-service`.
    static func decide(
        _ config: ContainerConfig?, initSystem: InitSystem, enabled: Bool, image: ImageEditor
    ) -> Decision {
        guard let config else { return .none("the input has no image config: a root file system names no command") }
        guard !config.command.isEmpty else { return .none("the image config names no Entrypoint or Cmd") }
        let shown = config.command.joined(separator: " ")
        if config.isOnlyShell { return .none("the image's command is only a shell (\(shown))") }
        guard enabled else { return .none("--no-container-service") }
        guard initSystem == .systemd || initSystem == .openrc else {
            return .problem("the container's command (\(shown)) needs systemd or OpenRC to run as a service; this image's init is \(initSystem.rawValue)")
        }
        let workingDirectory = config.workingDir.isEmpty ? "/" : config.workingDir
        guard let program = resolveProgram(config.command[0], config: config, workingDirectory: workingDirectory, image: image) else {
            return .problem(
                "the container's command \(config.command[0]) is not in the image (looked in PATH=\(config.environment("PATH") ?? defaultPath)): no service made")
        }
        let (user, group) = config.userAndGroup
        if !user.isEmpty, UInt32(user) == nil {
            let names = UserAccounts.passwdEntries(image.text("etc/passwd") ?? "").map(\.name)
            guard names.contains(user) else {
                return .problem("the container's User \(user) is not in the image's /etc/passwd: no service made")
            }
        }
        return .service(
            ContainerService(
                command: [program] + config.command.dropFirst(), environment: config.env, workingDirectory: workingDirectory,
                user: user.isEmpty ? nil : user, group: group.flatMap { $0.isEmpty ? nil : $0 }, exposedPorts: config.exposedPorts))
    }

    /// The PATH a container gets when its config sets none (Docker's default).
    static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// The absolute path of `program` in the image, looked up as the container runtime would: a
    /// name with a slash relative to the working directory, otherwise along the config's PATH.
    static func resolveProgram(_ program: String, config: ContainerConfig, workingDirectory: String, image: ImageEditor) -> String? {
        if program.contains("/") {
            let absolute = program.hasPrefix("/") ? program : (workingDirectory.hasSuffix("/") ? workingDirectory : workingDirectory + "/") + program
            return image.exists(String(absolute.drop { $0 == "/" })) ? absolute : nil
        }
        for dir in (config.environment("PATH") ?? defaultPath).split(separator: ":") where dir.hasPrefix("/") {
            let candidate = dir + "/" + program
            if let node = image.tree.resolve(ImagePath(String(candidate.dropFirst())))?.1, node.kind != .directory {
                return String(candidate)
            }
        }
        return nil
    }

    /// One line for the build log and `d2l inspect`.
    public var summary: String {
        var text = command.map(Self.shellQuote).joined(separator: " ")
        var details: [String] = []
        if let user { details.append("as \(user)" + (group.map { ":\($0)" } ?? "")) }
        if workingDirectory != "/" { details.append("in \(workingDirectory)") }
        let env = environment.filter { !$0.hasPrefix("PATH=") }
        if !env.isEmpty { details.append("with \(env.joined(separator: " "))") }
        if !exposedPorts.isEmpty { details.append("exposing \(exposedPorts.joined(separator: ", "))") }
        if !details.isEmpty { text += " (" + details.joined(separator: ", ") + ")" }
        return text
    }

    // MARK: systemd

    /// The unit: the command exactly as given (no variable expansion or specifiers, as Docker's exec
    /// form), its output to the journal and the console, after the network is up when there is one.
    var systemdUnit: String {
        var lines = [
            "# Written by d2l build: the container's own command, from the image config (Entrypoint, Cmd,",
            "# Env, WorkingDir, User). d2l build --no-container-service leaves it out.",
            "[Unit]",
            "Description=The container's command: \(Self.systemdEscape(command.joined(separator: " ")).prefix(200))",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            "ExecStart=" + command.map(Self.systemdQuote).joined(separator: " "),
            // WorkingDirectory= takes the rest of the line as the path: no quotes, only specifiers escaped.
            "WorkingDirectory=" + Self.systemdEscape(workingDirectory),
        ]
        for entry in environment { lines.append("Environment=" + Self.systemdQuote(entry)) }
        if let user { lines.append("User=" + user) }
        if let group { lines.append("Group=" + group) }
        lines += [
            "StandardOutput=journal+console",
            "StandardError=journal+console",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
        return lines.joined(separator: "\n")
    }

    /// One word for ExecStart= and friends: quoted, with `\`, `"`, `$` and `%` escaped so that
    /// systemd passes it on unchanged.
    static func systemdQuote(_ word: String) -> String {
        var out = "\""
        for c in word {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "$": out += "$$"
            case "%": out += "%%"
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out + "\""
    }

    /// Text for a field systemd reads with specifiers (`%`) but no quoting.
    static func systemdEscape(_ text: String) -> String {
        text.replacingOccurrences(of: "%", with: "%%").replacingOccurrences(of: "\n", with: " ")
    }

    // MARK: OpenRC

    /// The OpenRC service, output to the console. With `supervisor` (the image has OpenRC's
    /// supervise-daemon) it is supervised and restarted when it dies; otherwise start-stop-daemon runs
    /// it in the background. Debian's OpenRC has no start-stop-daemon of its own (dpkg's, which knows
    /// neither --stdout nor --env, takes its place), but it has supervise-daemon.
    func openRCScript(supervisor: Bool) -> String {
        var lines = [
            "#!/sbin/openrc-run",
            "# Written by d2l build: the container's own command, from the image config (Entrypoint, Cmd,",
            "# Env, WorkingDir, User). d2l build --no-container-service leaves it out.",
            "description=" + Self.shellQuote("The container's command: " + command.joined(separator: " ")),
            "command=" + Self.shellQuote(command[0]),
            // The daemon's arguments go through eval: each word is quoted for it, then the whole for the assignment.
            "command_args=" + Self.shellQuote(command.dropFirst().map(Self.shellQuote).joined(separator: " ")),
        ]
        if supervisor {
            lines.append("supervisor=supervise-daemon")
        } else {
            lines += ["command_background=true", "pidfile=/run/\(Self.name).pid"]
        }
        lines += [
            "directory=" + Self.shellQuote(workingDirectory),
            "output_log=/dev/console",
            "error_log=/dev/console",
        ]
        if let user { lines.append("command_user=" + Self.shellQuote(user + (group.map { ":" + $0 } ?? ""))) }
        // The Env goes to the command alone, through the daemon's --env: exported here, PATH would hide
        // OpenRC's own helpers (ebegin, eend) from this script.
        let env = environment.filter { $0.contains("=") && !$0.hasPrefix("=") }
        if !env.isEmpty {
            let variable = supervisor ? "supervise_daemon_args=" : "start_stop_daemon_args="
            lines.append(variable + Self.shellQuote(env.map { "--env " + Self.shellQuote($0) }.joined(separator: " ")))
        }
        // `after`, not `need`: Debian's OpenRC mounts with its LSB scripts and has no localmount service.
        lines += ["", "depend() {", "\tafter localmount net networking", "}", ""]
        return lines.joined(separator: "\n")
    }

    /// A word for sh: single-quoted unless it is plain.
    static func shellQuote(_ word: String) -> String {
        let plain = !word.isEmpty && word.allSatisfy { $0.isLetter || $0.isNumber || "/._-+=:,@%".contains($0) }
        return plain ? word : "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    // MARK: laying it

    /// Installs the service for `initSystem` (systemd or OpenRC), making WorkingDir when the image lacks it.
    func install(initSystem: InitSystem, into image: inout ImageEditor) {
        if workingDirectory != "/", !image.exists(String(workingDirectory.drop { $0 == "/" })) {
            // Docker makes a missing WorkingDir too.
            image.parents(of: String(workingDirectory.drop { $0 == "/" }))
            image.directory(String(workingDirectory.drop { $0 == "/" }))
        }
        switch initSystem {
        case .systemd:
            image.installSystemdUnit(Self.name + ".service", systemdUnit, wantedBy: ["multi-user.target"])
            image.note("container service: \(Self.name).service runs \(summary)")
        case .openrc:
            let supervisor = image.program("supervise-daemon") != nil
            image.installOpenRCService(Self.name, openRCScript(supervisor: supervisor), runlevel: "default")
            image.note("container service: /etc/init.d/\(Self.name) (OpenRC, default runlevel) runs \(summary)")
        default:
            break
        }
    }
}
