import CCrypto
import Foundation

/// Streaming SHA-256 over OpenSSL's libcrypto (hardware-accelerated where possible).
public final class SHA256Hasher {
    private let context: OpaquePointer

    public init() {
        context = EVP_MD_CTX_new()
        EVP_DigestInit_ex(context, EVP_sha256(), nil)
    }
    deinit { EVP_MD_CTX_free(context) }

    public func update(_ buffer: UnsafeRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        EVP_DigestUpdate(context, base, buffer.count)
    }
    public func update(_ data: Data) { data.withUnsafeBytes { update($0) } }

    /// The digest as lowercase hex; the hasher must not be used afterwards.
    public func finalizeHex() -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        EVP_DigestFinal_ex(context, &digest, &length)
        return digest.map { String(format: "%02x", $0) }.joined()
    }

    public static func hex(_ data: Data) -> String {
        let h = SHA256Hasher()
        h.update(data)
        return h.finalizeHex()
    }

    /// The SHA-256 of a file, read in 1 MiB chunks.
    ///
    /// - Throws: `CocoaError` when the file cannot be opened or read.
    public static func hex(ofFile path: String) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw CocoaError(.fileReadNoSuchFile, userInfo: [NSFilePathErrorKey: path])
        }
        defer { try? handle.close() }
        let h = SHA256Hasher()
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty { h.update(chunk) }
        return h.finalizeHex()
    }
}

/// SHA-512 crypt ($6$) password hashes, as /etc/shadow expects.
public enum PasswordHash {
    public static func sha512Crypt(_ password: String, salt: String) -> String? {
        var data = crypt_data()
        let result = password.withCString { pw in
            ("$6$" + salt).withCString { setting in crypt_r(pw, setting, &data) }
        }
        guard let result else { return nil }
        let text = String(cString: result)
        return text.hasPrefix("$6$") ? text : nil
    }
}
