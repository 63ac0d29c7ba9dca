import D2LVerify
import Foundation

/// A Debian binary package: an ar archive holding debian-binary, control.tar.* and data.tar.*.
///
/// Only the ar layer is read here (it is 60-byte text headers); the data.tar member is handed to
/// libarchive as a byte range of the .deb, so nothing is unpacked to find the kernel.
public enum DebianPackage {
    /// One member of an ar archive: its name and where its bytes are in the file.
    public struct Member: Sendable, Equatable {
        public var name: String
        public var offset: Int64
        public var size: Int64
    }

    public static let arMagic = Array("!<arch>\n".utf8)

    /// Whether `path` starts like an ar archive (a .deb).
    public static func isPackage(path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        return (try? handle.read(upToCount: 8)).map { [UInt8]($0) == arMagic } ?? false
    }

    /// The members of the ar archive at `path`.
    public static func members(path: String) throws -> [Member] {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw VerifyError.notAKernel(path: path, reason: "cannot be read")
        }
        defer { try? handle.close() }
        let size = Int64((try? handle.seekToEnd()) ?? 0)
        try? handle.seek(toOffset: 0)
        let magic = [UInt8]((try? handle.read(upToCount: 8)) ?? Data())
        guard magic == arMagic else { throw VerifyError.notAKernel(path: path, reason: "not an ar archive (.deb)") }
        var members: [Member] = []
        var offset: Int64 = 8
        while offset + 60 <= size {
            try? handle.seek(toOffset: UInt64(offset))
            let header = [UInt8]((try? handle.read(upToCount: 60)) ?? Data())
            guard header.count == 60, header[58] == 0x60, header[59] == 0x0A,
                let length = Int64(field(header, 48, 10))
            else {
                throw VerifyError.notAKernel(path: path, reason: "damaged ar header at byte \(offset)")
            }
            var name = field(header, 0, 16)
            if name.hasSuffix("/") { name.removeLast() }  // GNU ar ends names with a slash
            members.append(Member(name: name, offset: offset + 60, size: length))
            offset += 60 + length + (length % 2)  // members are 2-byte aligned
        }
        return members
    }

    /// The data.tar(.gz|.xz|.zst|...) member, which holds the package's files.
    public static func dataMember(path: String) throws -> Member {
        guard let member = try members(path: path).first(where: { $0.name.hasPrefix("data.tar") }) else {
            throw VerifyError.notAKernel(path: path, reason: "a .deb without data.tar")
        }
        return member
    }

    /// Whether a path inside a package (without the leading ./ or /) is a kernel: boot/vmlinuz-RELEASE.
    public static func isKernelPath(_ path: String) -> Bool {
        var path = Substring(path)
        while path.hasPrefix("./") || path.hasPrefix("/") { path = path.drop { $0 == "." || $0 == "/" } }
        return path.hasPrefix("boot/vmlinuz-") && !path.dropFirst("boot/".count).contains("/")
    }

    private static func field(_ header: [UInt8], _ start: Int, _ length: Int) -> String {
        String(decoding: header[start..<start + length], as: UTF8.self).trimmingCharacters(in: .whitespaces)
    }
}
