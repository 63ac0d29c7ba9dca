/// What an image's config says to run, as `docker run` would: the `config` section of an OCI or
/// Docker image config (Entrypoint, Cmd, Env, WorkingDir, User, ExposedPorts).
public struct ContainerConfig: Sendable, Equatable, Codable {
    public var entrypoint: [String]
    public var cmd: [String]
    /// `NAME=VALUE` strings, in the config's order.
    public var env: [String]
    /// Empty when the config names none (the container runs in /).
    public var workingDir: String
    /// `USER`, `UID`, `USER:GROUP` or `UID:GID`; empty for root.
    public var user: String
    /// `8080/tcp`, `53/udp`, sorted.
    public var exposedPorts: [String]

    public init(
        entrypoint: [String] = [], cmd: [String] = [], env: [String] = [], workingDir: String = "", user: String = "",
        exposedPorts: [String] = []
    ) {
        self.entrypoint = entrypoint
        self.cmd = cmd
        self.env = env
        self.workingDir = workingDir
        self.user = user
        self.exposedPorts = exposedPorts
    }

    /// What `docker run IMAGE` executes: the Entrypoint followed by the Cmd (its arguments), or the Cmd alone.
    public var command: [String] { entrypoint + cmd }

    /// Shells that, run with no arguments, only wait for someone to type: Debian's base image says `bash`.
    public static let interactiveShells: Set<String> = ["sh", "bash", "ash", "dash", "zsh", "ksh", "mksh", "fish"]

    /// Whether the command is nothing but an interactive shell (`bash`, `/bin/sh`): a base image's
    /// default for `docker run -it`, not a service.
    public var isOnlyShell: Bool {
        guard command.count == 1, let program = command.first else { return false }
        let name = program.split(separator: "/").last.map(String.init) ?? program
        return Self.interactiveShells.contains(name)
    }

    /// The value of `name` in Env, if it is set there.
    public func environment(_ name: String) -> String? {
        for entry in env.reversed() where entry.hasPrefix(name + "=") { return String(entry.dropFirst(name.count + 1)) }
        return nil
    }

    /// `User` split at the colon: the user and, when given, the group.
    public var userAndGroup: (user: String, group: String?) {
        guard let colon = user.firstIndex(of: ":") else { return (user, nil) }
        return (String(user[..<colon]), String(user[user.index(after: colon)...]))
    }
}

/// The image config's JSON `config` section (the same in OCI and Docker image configs).
struct ContainerConfigJSON: Decodable {
    var Entrypoint: [String]?
    var Cmd: [String]?
    var Env: [String]?
    var WorkingDir: String?
    var User: String?
    var ExposedPorts: [String: AnyValue]?

    /// Any JSON value, ignored: ExposedPorts maps each port to `{}`, but some writers put null.
    struct AnyValue: Decodable {
        init(from decoder: any Decoder) throws {}
    }

    var config: ContainerConfig {
        ContainerConfig(
            entrypoint: Entrypoint ?? [], cmd: Cmd ?? [], env: Env ?? [], workingDir: WorkingDir ?? "", user: User ?? "",
            exposedPorts: (ExposedPorts ?? [:]).keys.sorted())
    }
}
