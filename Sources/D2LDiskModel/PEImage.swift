import Foundation

/// The parts of a PE/COFF image (an EFI application, or a bzImage with its EFI stub) that tell
/// whether it is signed: the Certificate Table data directory (PE/COFF specification 3.4.3 and 4.7),
/// which holds the Authenticode signature that shim and Secure Boot check.
public enum PEImage {
    /// Whether the file at `path` is a PE image with a non-empty Certificate Table; nil when it is not
    /// a PE image at all.
    public static func isSigned(path: String) -> Bool? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let head = try? handle.read(upToCount: 4096) else { return nil }
        return isSigned(header: [UInt8](head))
    }

    /// The same from the file's first bytes (its headers, at least the first 512).
    public static func isSigned(header bytes: [UInt8]) -> Bool? {
        func u16(_ o: Int) -> Int { o + 2 <= bytes.count ? Int(bytes[o]) | Int(bytes[o + 1]) << 8 : 0 }
        func u32(_ o: Int) -> Int { o + 4 <= bytes.count ? u16(o) | u16(o + 2) << 16 : 0 }
        guard bytes.count >= 0x40, bytes[0] == 0x4D, bytes[1] == 0x5A else { return nil }  // "MZ"
        let pe = u32(0x3C)
        guard pe + 24 <= bytes.count, Array(bytes[pe..<pe + 4]) == [0x50, 0x45, 0, 0] else { return nil }  // "PE\0\0"
        let optional = pe + 24
        let magic = u16(optional)
        // Data directories follow the optional header's fixed part: 96 bytes for PE32, 112 for PE32+.
        let directories: Int
        switch magic {
        case 0x10B: directories = optional + 96
        case 0x20B: directories = optional + 112
        default: return nil
        }
        let count = u32(directories - 4)
        guard count > 4 else { return false }
        let certificateTable = directories + 4 * 8
        return u32(certificateTable + 4) > 0
    }
}
