import CArchive
import D2LDiskModel
import Foundation

/// A kernel for direct boot, its architecture and the version string it prints after `Linux version`.
///
/// An x86 bzImage: the boot protocol (Documentation/arch/x86/boot.rst) puts "HdrS" at 0x202, the
/// protocol version at 0x206 and, at 0x20E, a pointer (minus 0x200) to the same text that the kernel
/// prints after `Linux version`: release, builder and build number. An arm64 Image
/// (Documentation/arch/arm64/booting.rst: "ARM\x64" at 56), as is or gzip-compressed as Debian ships
/// it, has no such pointer: its `linux_banner` is read from the image itself. Reading it before the
/// boot is what lets the kernel stage insist that the kernel that booted is the one given, so a stale
/// kernel cannot pass.
public struct KernelImage: Sendable, Equatable, Codable {
    public var path: String
    /// The architecture the kernel runs on.
    public var architecture: Architecture = .amd64
    /// The whole header string, e.g. `6.1.0-50-amd64 (debian-kernel@lists.debian.org) #1 SMP ... (2024-08-10)`.
    public var versionString: String
    /// The first word: `uname -r`.
    public var release: String
    /// `(user@host)`, without the parentheses; nil when the string has no such part.
    public var builder: String?
    /// What follows the builder: `#1 SMP PREEMPT_DYNAMIC Debian 6.1.123-1 (2025-01-02)` (`uname -v`).
    public var build: String?

    public init(path: String, versionString: String, architecture: Architecture = .amd64) {
        self.path = path
        self.architecture = architecture
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

    /// Reads the kernel at `path`: an x86 bzImage's header, or an arm64 Image's banner.
    ///
    /// - Throws: `VerifyError.notAKernel` for a missing or unreadable file, and for anything that is
    ///   neither a bzImage nor an arm64 Image (plain or gzip-compressed), with what was found instead.
    public init(path: String) throws {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            let reason = FileManager.default.fileExists(atPath: path) ? "cannot be read" : "does not exist"
            throw VerifyError.notAKernel(path: path, reason: reason)
        }
        defer { try? handle.close() }
        // The version string sits inside the real-mode setup code: at most 64 sectors.
        let head = [UInt8]((try? handle.read(upToCount: 0x8200)) ?? Data())
        if head.starts(with: [0x1F, 0x8B]) || Self.isArm64Image(head) {
            do {
                self.init(path: path, versionString: try Self.arm64VersionString(path: path), architecture: .arm64)
            } catch {
                throw VerifyError.notAKernel(path: path, reason: error.description)
            }
            return
        }
        do {
            self.init(path: path, versionString: try Self.versionString(header: head))
        } catch {
            throw VerifyError.notAKernel(path: path, reason: error.description)
        }
    }

    /// Whether `bytes` start with an arm64 Image header: the magic "ARM\x64" at offset 56.
    static func isArm64Image(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 64 && bytes[56..<60].elementsEqual([0x41, 0x52, 0x4D, 0x64])
    }

    enum Arm64ImageError: Error, CustomStringConvertible {
        case unreadable(String), notImage, noBanner

        var description: String {
            switch self {
            case .unreadable(let why): return "cannot be decompressed: \(why)"
            case .notImage: return "neither an x86 bzImage nor an arm64 Image (no \"ARM\\x64\" at 56)"
            case .noBanner: return "an arm64 Image without a \"Linux version\" banner"
            }
        }
    }

    /// The largest kernel read whole, decompressed: Debian's arm64 Images are about 30-40 MiB.
    static let arm64ImageLimit = 256 << 20

    /// The text after `Linux version ` in an arm64 Image (gzip-compressed or not), in the bzImage
    /// header's shape: `RELEASE (BUILDER) BUILD`, without the compiler part the banner also has.
    static func arm64VersionString(path: String) throws(Arm64ImageError) -> String {
        let image = try decompressed(path: path)
        guard isArm64Image(image) else { throw .notImage }
        guard let banner = versionString(banner: image) else { throw .noBanner }
        return banner
    }

    /// The file's bytes, through any compression libarchive knows (gzip, as Debian ships arm64 kernels).
    private static func decompressed(path: String) throws(Arm64ImageError) -> [UInt8] {
        guard let archive = archive_read_new() else { throw .unreadable("libarchive failed") }
        defer { archive_read_free(archive) }
        archive_read_support_filter_all(archive)
        archive_read_support_format_raw(archive)
        guard archive_read_open_filename(archive, path, 1 << 16) == ARCHIVE_OK else {
            throw .unreadable(String(cString: archive_error_string(archive)))
        }
        var entry: OpaquePointer?
        guard archive_read_next_header(archive, &entry) == ARCHIVE_OK else {
            throw .unreadable(archive_error_string(archive).map { String(cString: $0) } ?? "empty")
        }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while out.count <= arm64ImageLimit {
            let n = chunk.withUnsafeMutableBytes { archive_read_data(archive, $0.baseAddress, $0.count) }
            if n < 0 { throw .unreadable(String(cString: archive_error_string(archive))) }
            if n == 0 { return out }
            out.append(contentsOf: chunk[0..<n])
        }
        throw .unreadable("more than \(arm64ImageLimit >> 20) MiB")
    }

    /// The `Linux version RELEASE (BUILDER) (COMPILER) BUILD` line in `image` (the kernel's
    /// `linux_banner`), as `RELEASE (BUILDER) BUILD`. Since Linux 6.1 an Image holds two: init/version.c's
    /// with a placeholder build number (`# SMP ...`) and init/version-timestamp.c's, the one printed, with
    /// the real one (`#1 SMP ...`); the one with a number wins, else the last.
    static func versionString(banner image: [UInt8]) -> String? {
        let needle = Array("Linux version ".utf8)
        var found: [String] = []
        var from = 0
        while let start = firstIndex(of: needle, in: image, from: from) {
            from = start + 1
            let text = image[(start + needle.count)...].prefix { $0 != 0 && $0 != 0x0A }.prefix(512)
            guard text.allSatisfy({ (0x20..<0x7F).contains($0) }), !text.contains(UInt8(ascii: "%")) else { continue }
            let line = String(decoding: text, as: UTF8.self)
            // RELEASE (BUILDER) (COMPILER, LINKER) BUILD: the compiler part's parentheses nest.
            let words = line.split(separator: " ", maxSplits: 1)
            guard words.count == 2, words[1].hasPrefix("("), let close = words[1].range(of: ") ") else { continue }
            let builder = words[1][..<close.upperBound]
            var rest = words[1][close.upperBound...]
            if rest.hasPrefix("(") {
                var depth = 0
                var end = rest.startIndex
                for index in rest.indices {
                    if rest[index] == "(" { depth += 1 } else if rest[index] == ")" { depth -= 1 }
                    if depth == 0 { end = rest.index(after: index); break }
                }
                rest = rest[end...].drop { $0 == " " }
            }
            found.append("\(words[0]) \(builder)\(rest)")
        }
        return found.first { $0.range(of: #"\) #\d"#, options: .regularExpression) != nil } ?? found.last
    }

    private static func firstIndex(of needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
        haystack.withUnsafeBufferPointer { buffer -> Int? in
            guard let base = buffer.baseAddress, buffer.count >= needle.count else { return nil }
            var index = from
            while index <= buffer.count - needle.count {
                guard let hit = memchr(base + index, Int32(needle[0]), buffer.count - needle.count - index + 1) else { return nil }
                let position = base.distance(to: hit.assumingMemoryBound(to: UInt8.self))
                if memcmp(base + position, needle, needle.count) == 0 { return position }
                index = position + 1
            }
            return nil
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
