import Foundation

/// The members of an uncompressed tar file and where their data lies, so that
/// layers inside a docker-archive or oci-archive can be read in place.
struct TarIndex {
    struct Member {
        var name: String
        var offset: Int64
        var size: Int64
        var isRegular: Bool
    }
    var members: [String: Member] = [:]
    var names: [String] = []
    /// False when reading stopped at the member limit before the end of the tar.
    var isComplete = true

    /// Indexes the tar at `fd`, up to `limit` members; returns nil when the file is not an uncompressed tar.
    static func read(fd: Int32, fileSize: Int64, limit: Int = .max) -> TarIndex? {
        var index = TarIndex()
        var offset: Int64 = 0
        var header = [UInt8](repeating: 0, count: 512)
        var pendingName: String?
        while offset + 512 <= fileSize, index.names.count < limit {
            let n = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 512, off_t(offset)) }
            guard n == 512 else { return index.names.isEmpty ? nil : index }
            if header.allSatisfy({ $0 == 0 }) { break }
            guard checksumOK(header) else { return index.names.isEmpty ? nil : index }
            guard let size = parseNumber(header[124..<136]) else { return nil }
            let type = header[156]
            let dataOffset = offset + 512
            let next = dataOffset + (size + 511) / 512 * 512
            switch type {
            case UInt8(ascii: "x"):
                if let data = readBytes(fd: fd, offset: dataOffset, count: Int(min(size, 1 << 20))) {
                    pendingName = paxPath(data) ?? pendingName
                }
            case UInt8(ascii: "L"):
                if let data = readBytes(fd: fd, offset: dataOffset, count: Int(min(size, 1 << 16))) {
                    pendingName = String(decoding: data.prefix { $0 != 0 }, as: UTF8.self)
                }
            case UInt8(ascii: "g"):
                break
            default:
                var name = pendingName ?? headerName(header)
                pendingName = nil
                while name.hasPrefix("./") { name.removeFirst(2) }
                let regular = type == 0 || type == UInt8(ascii: "0") || type == UInt8(ascii: "7")
                let member = Member(name: name, offset: dataOffset, size: size, isRegular: regular)
                if index.members[name] == nil { index.names.append(name) }
                index.members[name] = member
            }
            offset = next
        }
        index.isComplete = index.names.count < limit
        return index
    }

    private static func checksumOK(_ h: [UInt8]) -> Bool {
        guard let stored = parseNumber(h[148..<156]) else { return false }
        var sum: Int64 = 0
        for (i, b) in h.enumerated() { sum += (148..<156).contains(i) ? 32 : Int64(b) }
        return sum == stored
    }

    /// Octal (NUL/space terminated) or GNU base-256 numbers.
    static func parseNumber(_ field: ArraySlice<UInt8>) -> Int64? {
        if let first = field.first, first & 0x80 != 0 {
            var value: Int64 = Int64(first & 0x7f)
            for b in field.dropFirst() { value = value << 8 | Int64(b) }
            return value
        }
        var value: Int64 = 0
        var seen = false
        for b in field {
            if b == 0 || b == 32 { if seen { break } else { continue } }
            guard b >= 48, b <= 55 else { return nil }
            value = value * 8 + Int64(b - 48)
            seen = true
        }
        return value
    }

    private static func headerName(_ h: [UInt8]) -> String {
        let name = h[0..<100].prefix { $0 != 0 }
        let magic = h[257..<262]
        let prefix = Array(magic) == Array("ustar".utf8) ? h[345..<500].prefix { $0 != 0 } : []
        let full = prefix.isEmpty ? Array(name) : Array(prefix) + [UInt8(ascii: "/")] + Array(name)
        return String(decoding: full, as: UTF8.self)
    }

    private static func paxPath(_ data: [UInt8]) -> String? {
        // Records: "LEN key=value\n"
        var i = 0
        while i < data.count {
            guard let space = data[i...].firstIndex(of: 32),
                let len = Int(String(decoding: data[i..<space], as: UTF8.self)), len > 0,
                i + len <= data.count
            else { return nil }
            let record = data[(space + 1)..<(i + len - 1)]
            if let eq = record.firstIndex(of: UInt8(ascii: "=")),
                String(decoding: record[record.startIndex..<eq], as: UTF8.self) == "path"
            {
                return String(decoding: record[(eq + 1)...], as: UTF8.self)
            }
            i += len
        }
        return nil
    }

    static func readBytes(fd: Int32, offset: Int64, count: Int) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = buffer.withUnsafeMutableBytes {
                pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done))
            }
            if n <= 0 { break }
            done += n
        }
        return done == count ? buffer : nil
    }
}
