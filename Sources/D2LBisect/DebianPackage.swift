import D2LImage
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
    ///
    /// - Throws: `BisectError.notAPackage` when the file cannot be read or is not an ar archive.
    public static func members(path: String) throws -> [Member] {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw BisectError.notAPackage(path: path, reason: "cannot be read")
        }
        defer { try? handle.close() }
        let size = Int64((try? handle.seekToEnd()) ?? 0)
        try? handle.seek(toOffset: 0)
        let magic = [UInt8]((try? handle.read(upToCount: 8)) ?? Data())
        guard magic == arMagic else { throw BisectError.notAPackage(path: path, reason: "not an ar archive (.deb)") }
        var members: [Member] = []
        var offset: Int64 = 8
        while offset + 60 <= size {
            try? handle.seek(toOffset: UInt64(offset))
            let header = [UInt8]((try? handle.read(upToCount: 60)) ?? Data())
            guard header.count == 60, header[58] == 0x60, header[59] == 0x0A,
                let length = Int64(field(header, 48, 10))
            else {
                throw BisectError.notAPackage(path: path, reason: "damaged ar header at byte \(offset)")
            }
            var name = field(header, 0, 16)
            if name.hasSuffix("/") { name.removeLast() }  // GNU ar ends names with a slash
            members.append(Member(name: name, offset: offset + 60, size: length))
            offset += 60 + length + (length % 2)  // members are 2-byte aligned
        }
        return members
    }

    /// The data.tar(.gz|.xz|.zst|...) member, which holds the package's files.
    ///
    /// - Throws: `BisectError.notAPackage` when the file is not a .deb or has no data.tar member.
    public static func dataMember(path: String) throws -> Member {
        guard let member = try members(path: path).first(where: { $0.name.hasPrefix("data.tar") }) else {
            throw BisectError.notAPackage(path: path, reason: "a .deb without data.tar")
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

    /// Takes boot/vmlinuz-* out of a linux-image .deb into `directory`/<package>/ and returns its path;
    /// libarchive reads the package's data.tar in place, as a byte range of the .deb.
    ///
    /// - Throws: `BisectError.notAPackage` for a file that is not a .deb, `VerifyError.notAKernel` for a
    ///   package without a kernel, `ImageError` when its data.tar cannot be read.
    public static func extractKernel(fromPackage deb: String, into directory: String) throws -> String {
        let member = try dataMember(path: deb)
        let source = LayerSource(
            location: .range(deb, offset: member.offset, length: member.size), hasWhiteouts: false, size: member.size,
            description: "\(deb) \(member.name)")
        let stream = try source.open()
        defer { try? stream.finish() }
        while let entry = try stream.next() {
            let path = String(decoding: entry.path, as: UTF8.self)
            guard isKernelPath(path), case .regular = entry.kind else { continue }
            let target = URL(fileURLWithPath: directory)
                .appendingPathComponent(URL(fileURLWithPath: deb).deletingPathExtension().lastPathComponent)
            try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
            let file = target.appendingPathComponent(URL(fileURLWithPath: path).lastPathComponent)
            try Data(try stream.readAll(limit: 256 << 20)).write(to: file, options: .atomic)
            return file.path
        }
        throw VerifyError.notAKernel(path: deb, reason: "the package has no boot/vmlinuz-*: not a linux-image package")
    }
}
