import Foundation

/// An x86 bzImage and the version string its setup header carries.
///
/// The boot protocol (Documentation/arch/x86/boot.rst) puts "HdrS" at 0x202, the protocol version at
/// 0x206 and, at 0x20E, a pointer (minus 0x200) to the same text that the kernel prints after
/// `Linux version`: release, builder and build number. Reading it before the boot is what lets the
/// kernel stage insist that the kernel that booted is the one given, so a stale kernel cannot pass.
public struct KernelImage: Sendable, Equatable, Codable {
    public var path: String
    /// The whole header string, e.g. `6.1.0-50-amd64 (debian-kernel@lists.debian.org) #1 SMP ... (2024-08-10)`.
    public var versionString: String
    /// The first word: `uname -r`.
    public var release: String
    /// `(user@host)`, without the parentheses; nil when the string has no such part.
    public var builder: String?
    /// What follows the builder: `#1 SMP PREEMPT_DYNAMIC Debian 6.1.123-1 (2025-01-02)` (`uname -v`).
    public var build: String?

    public init(path: String, versionString: String) {
        self.path = path
        self.versionString = versionString
        let words = versionString.split(separator: " ", maxSplits: 1)
        release = words.first.map(String.init) ?? versionString
        let rest = words.count > 1 ? String(words[1]) : ""
        if rest.hasPrefix("("), let close = rest.range(of: ") ") {
            builder = String(rest[rest.index(after: rest.startIndex)..<close.lowerBound])
            build = String(rest[close.upperBound...])
        } else if !rest.isEmpty {
            build = rest
        }
    }

    /// Reads the header of the file at `path`; throws `notAKernel` for anything that is not a bzImage.
    public init(path: String) throws {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            let reason = FileManager.default.fileExists(atPath: path) ? "cannot be read" : "does not exist"
            throw VerifyError.notAKernel(path: path, reason: reason)
        }
        defer { try? handle.close() }
        // The version string sits inside the real-mode setup code: at most 64 sectors.
        let head = (try? handle.read(upToCount: 0x8200)) ?? Data()
        do {
            self.init(path: path, versionString: try Self.versionString(header: [UInt8](head)))
        } catch {
            throw VerifyError.notAKernel(path: path, reason: error.description)
        }
    }

    enum BzImageHeaderError: Error, CustomStringConvertible {
        case short(Int), noMagic, oldProtocol(UInt16), noVersion, versionOutside(Int)

        var description: String {
            switch self {
            case .short(let count): return "only \(count) bytes: too short for a bzImage"
            case .noMagic: return "no \"HdrS\" at 0x202: not an x86 bzImage"
            case .oldProtocol(let version):
                return "boot protocol \(version >> 8).\(String(format: "%02d", version & 0xFF)) is older than 2.00"
            case .noVersion: return "the header has no kernel version string"
            case .versionOutside(let offset): return "the version string pointer (0x\(String(offset, radix: 16))) is outside the setup code"
            }
        }
    }

    /// The NUL-terminated version string the header's `kernel_version` field points at.
    static func versionString(header bytes: [UInt8]) throws(BzImageHeaderError) -> String {
        guard bytes.count >= 0x210 else { throw .short(bytes.count) }
        guard bytes[0x202..<0x206].elementsEqual(Array("HdrS".utf8)) else { throw .noMagic }
        let protocolVersion = UInt16(bytes[0x206]) | UInt16(bytes[0x207]) << 8
        guard protocolVersion >= 0x200 else { throw .oldProtocol(protocolVersion) }
        let pointer = Int(UInt16(bytes[0x20E]) | UInt16(bytes[0x20F]) << 8)
        guard pointer != 0 else { throw .noVersion }
        let offset = pointer + 0x200
        guard offset < bytes.count else { throw .versionOutside(offset) }
        let text = bytes[offset...].prefix { $0 != 0 }.prefix(512)
        guard !text.isEmpty, text.allSatisfy({ (0x20..<0x7F).contains($0) }) else { throw .noVersion }
        return String(decoding: text, as: UTF8.self)
    }

    /// Matches the `Linux version` line of this kernel and captures its release.
    public var bannerPattern: String {
        var pattern = #"Linux version ("# + NSRegularExpression.escapedPattern(for: release) + ")"
        if let builder { pattern += #" \("# + NSRegularExpression.escapedPattern(for: builder) + #"\)"# }
        if let build { pattern += " .*" + NSRegularExpression.escapedPattern(for: build) }
        return pattern
    }

    /// Matches a `Linux version` line of any other kernel.
    public var otherKernelPattern: String {
        let release = NSRegularExpression.escapedPattern(for: release)
        var expected = release + " "
        if let builder { expected += #"\("# + NSRegularExpression.escapedPattern(for: builder) + #"\) "# }
        if let build { expected += ".*" + NSRegularExpression.escapedPattern(for: build) }
        return #"^Linux version (?!"# + expected + ")"
    }
}
