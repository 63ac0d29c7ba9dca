/// The CPU architectures whose disks d2l builds and boots.
public enum Architecture: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    case amd64, arm64

    public var description: String { rawValue }

    /// The ELF `e_machine` of this architecture's programs (62 EM_X86_64, 183 EM_AARCH64).
    public var elfMachine: UInt16 {
        switch self {
        case .amd64: return 62
        case .arm64: return 183
        }
    }

    /// The architecture of an ELF program's `e_machine`, when d2l boots it.
    public init?(elfMachine: UInt16) {
        guard let match = Self.allCases.first(where: { $0.elfMachine == elfMachine }) else { return nil }
        self = match
    }

    /// The architecture of an ELF file's first bytes (at least 20), when it is one d2l boots.
    public init?(elfHeader head: some Collection<UInt8>) {
        let bytes = Array(head.prefix(20))
        guard bytes.count == 20, bytes.starts(with: [0x7F, 0x45, 0x4C, 0x46]) else { return nil }
        self.init(elfMachine: UInt16(bytes[18]) | UInt16(bytes[19]) << 8)
    }

    /// The architecture of the machine d2l runs on.
    public static var host: Architecture {
        #if arch(arm64)
            return .arm64
        #else
            return .amd64
        #endif
    }

    /// The platform this architecture's Linux images carry.
    public var platform: Platform { Platform(os: "linux", architecture: rawValue) }

    /// The architecture's name in QEMU and libvirt (`qemu-system-x86_64`, `<type arch='aarch64'>`).
    public var qemuName: String {
        switch self {
        case .amd64: return "x86_64"
        case .arm64: return "aarch64"
        }
    }

    /// The serial console the kernel is told to use (`console=`): the PC's 16550 UART `ttyS0`, or the
    /// PL011 UART `ttyAMA0` of QEMU's arm64 `virt` machine (Documentation/admin-guide/serial-console.rst).
    public var serialConsole: String {
        switch self {
        case .amd64: return "ttyS0"
        case .arm64: return "ttyAMA0"
        }
    }

    /// The firmware this architecture's disks can boot under: arm64 machines have UEFI only (no BIOS,
    /// and no Secure Boot keys d2l can enroll for them).
    public var bootsUnderBIOS: Bool { self == .amd64 }

    /// The architecture a kernel file's first bytes (at least 0x210) show: an x86 bzImage ("HdrS" at
    /// 0x202, Documentation/arch/x86/boot.rst) or an arm64 Image ("ARM\x64" at 56,
    /// Documentation/arch/arm64/booting.rst); nil for anything else, a compressed Image included.
    public init?(kernelHeader head: some Collection<UInt8>) {
        let bytes = Array(head.prefix(0x210))
        if bytes.count >= 0x206, bytes[0x202..<0x206].elementsEqual([0x48, 0x64, 0x72, 0x53]) {
            self = .amd64
        } else if bytes.count >= 60, bytes[56..<60].elementsEqual([0x41, 0x52, 0x4D, 0x64]) {
            self = .arm64
        } else {
            return nil
        }
    }

    /// Debian's package for the architecture's stock kernel, for messages.
    public var debianKernelPackage: String { "linux-image-\(rawValue)" }
}

/// An OCI platform: `os/architecture[/variant]`, normalized as the OCI image spec's
/// image-index `platform` fields and containerd's `platforms.Normalize` spell them: `x86_64` and
/// `x86-64` are `amd64`, `aarch64` is `arm64` (whose default variant `v8` is dropped), `i386` is
/// `386`, `armhf` is `arm/v7` and `armel` is `arm/v6`.
public struct Platform: Sendable, Hashable, CustomStringConvertible, Codable {
    public var os: String
    public var architecture: String
    public var variant: String?

    /// A platform from its parts, normalized.
    public init(os: String, architecture: String, variant: String? = nil) {
        (self.os, self.architecture, self.variant) = Self.normalize(os: os, architecture: architecture, variant: variant)
    }

    /// Why a text is not a platform.
    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public var text: String
        public var description: String {
            "'\(text)' is not a platform: give os/architecture[/variant], such as linux/amd64 or linux/arm64"
        }
    }

    /// Parses `os/architecture[/variant]`, or an architecture alone (`arm64`, meaning linux/arm64).
    ///
    /// - Throws: `Platform.ParseError` when the text has another shape, an empty or non-word part,
    ///   or (alone) a word that is not a known architecture.
    public init(parsing text: String) throws(ParseError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        let word = { (part: String) in
            !part.isEmpty && part.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }
        }
        guard (1...3).contains(parts.count), parts.allSatisfy(word) else { throw ParseError(text: text) }
        if parts.count == 1 {
            let (_, arch, variant) = Self.normalize(os: "linux", architecture: parts[0], variant: nil)
            guard Self.knownArchitectures.contains(arch) else { throw ParseError(text: text) }
            self.init(os: "linux", architecture: arch, variant: variant)
            return
        }
        self.init(os: parts[0], architecture: parts[1], variant: parts.count == 3 ? parts[2] : nil)
    }

    /// The architectures the OCI image spec lists (Go's GOARCH values).
    static let knownArchitectures: Set<String> = [
        "386", "amd64", "arm", "arm64", "loong64", "mips", "mipsle", "mips64", "mips64le", "ppc64", "ppc64le",
        "riscv64", "s390x", "wasm",
    ]

    static func normalize(os: String, architecture: String, variant: String?) -> (String, String, String?) {
        var os = os.lowercased()
        if os == "macos" { os = "darwin" }
        var arch = architecture.lowercased()
        var variant = variant?.lowercased()
        switch arch {
        case "i386", "i686": arch = "386"; variant = nil
        case "x86_64", "x86-64", "amd64": arch = "amd64"; if variant == "v1" { variant = nil }
        case "aarch64", "arm64": arch = "arm64"; if variant == "8" || variant == "v8" { variant = nil }
        case "armhf": arch = "arm"; variant = "v7"
        case "armel": arch = "arm"; variant = "v6"
        case "arm":
            switch variant {
            case nil, "7": variant = "v7"
            case "5", "6", "8": variant = "v" + variant!
            default: break
            }
        default: break
        }
        if variant?.isEmpty == true { variant = nil }
        return (os, arch, variant)
    }

    public var description: String { [os, architecture, variant].compactMap { $0 }.joined(separator: "/") }

    /// The d2l architecture of this platform, when d2l boots it.
    public var bootableArchitecture: Architecture? {
        os == "linux" ? Architecture(rawValue: architecture) : nil
    }

    /// Whether an image whose config or index entry says `os`/`architecture`/`variant` is this platform;
    /// a missing os or architecture counts as linux/amd64 (older images omit them), and a variant counts
    /// only when this platform names one.
    public func matches(os: String?, architecture: String?, variant: String?) -> Bool {
        let other = Platform(os: os ?? "linux", architecture: architecture ?? "amd64", variant: variant)
        return other.os == self.os && other.architecture == self.architecture
            && (self.variant == nil || self.variant == other.variant)
    }
}
