/// A GUID as the UEFI specification stores it (appendix A): the first three fields little-endian,
/// the last two as bytes, so that `C12A7328-F81F-11D2-BA4B-00A0C93EC93B` is stored as
/// `28 73 2A C1 1F F8 D2 11 BA 4B 00 A0 C9 3E C9 3B`.
public struct GUID: Sendable, Hashable, CustomStringConvertible, Codable {
    /// The 16 bytes in on-disk order.
    public let bytes: [UInt8]

    /// A GUID from its 16 on-disk bytes.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 16 else { return nil }
        self.bytes = Array(bytes)
    }

    /// Parses the text form `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` (either case).
    public init?(_ text: String) {
        let hex = text.filter { $0 != "-" }
        guard text.count == 36, hex.count == 32, hex.allSatisfy(\.isHexDigit) else { return nil }
        var plain: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            guard let byte = UInt8(hex[index..<next], radix: 16) else { return nil }
            plain.append(byte)
            index = next
        }
        self.bytes = Self.swapMixedEndian(plain)
    }

    /// A version-4-shaped GUID whose bits come from `hex` (at least 32 hex digits), for reproducible
    /// disks: the same seed gives the same GUID.
    public init(seedHex hex: String) {
        var plain: [UInt8] = []
        var index = hex.startIndex
        while plain.count < 16, index < hex.endIndex, let next = hex.index(index, offsetBy: 2, limitedBy: hex.endIndex) {
            plain.append(UInt8(hex[index..<next], radix: 16) ?? 0)
            index = next
        }
        while plain.count < 16 { plain.append(0) }
        plain[6] = plain[6] & 0x0F | 0x40  // version 4
        plain[8] = plain[8] & 0x3F | 0x80  // variant 10xx
        self.bytes = Self.swapMixedEndian(plain)
    }

    /// Big-endian text order <-> UEFI's mixed-endian storage order (the swap is its own inverse).
    private static func swapMixedEndian(_ b: [UInt8]) -> [UInt8] {
        [b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6]] + Array(b[8..<16])
    }

    public var description: String {
        let plain = Self.swapMixedEndian(bytes)
        let hex = plain.map { byte in
            let digits = String(byte, radix: 16, uppercase: true)
            return digits.count == 1 ? "0" + digits : digits
        }
        return hex[0..<4].joined() + "-" + hex[4..<6].joined() + "-" + hex[6..<8].joined() + "-"
            + hex[8..<10].joined() + "-" + hex[10..<16].joined()
    }

    public static let zero = GUID(bytes: [UInt8](repeating: 0, count: 16))!
}

/// CRC-32 (ISO-HDLC, the polynomial 0xEDB88320 reflected), as the GPT header and entry array use it
/// (UEFI specification 5.3.2).
enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }
}
