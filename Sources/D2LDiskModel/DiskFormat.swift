import Foundation

/// Disk image formats d2l writes and QEMU reads, named as qemu-img and libvirt name them;
/// everything but raw is converted with `qemu-img convert`.
public enum DiskFormat: String, CaseIterable, Sendable, Codable, CustomStringConvertible {
    case raw, qcow2, vmdk, vdi, vhdx, vpc
    /// A KubeVirt containerDisk: an OCI image archive holding the disk as qcow2 under /disk/.
    case containerdisk

    /// The format QEMU reads the disk in (a containerDisk holds a qcow2).
    public var qemuFormat: String { self == .containerdisk ? "qcow2" : rawValue }

    public var description: String { rawValue }

    /// The format a file name implies (`.vhd` is qemu-img's vpc); nil for an extension d2l does not know.
    public static func fromExtension(_ path: String) -> DiskFormat? {
        if path.lowercased().hasSuffix(".oci.tar") { return .containerdisk }
        switch URL(fileURLWithPath: path).pathExtension.lowercased() {
        case "img", "raw": return .raw
        case "qcow2": return .qcow2
        case "vmdk": return .vmdk
        case "vdi": return .vdi
        case "vhdx": return .vhdx
        case "vhd", "vpc": return .vpc
        default: return nil
        }
    }

    /// The format to write `path` in: the one its extension names, raw when it has none.
    ///
    /// - Returns: nil for an extension d2l does not write (`disk.foo`, `disk.vhdx.gz`), which should be
    ///   refused rather than written as raw under a name that says otherwise (see `unknownExtensionMessage`).
    public static func forOutput(_ path: String) -> DiskFormat? {
        // A hidden file's leading dot is not an extension.
        let name = (path as NSString).lastPathComponent.drop { $0 == "." }
        return name.contains(".") ? fromExtension(path) : .raw
    }

    /// Why `path` cannot be written as given: its extension names no format d2l writes.
    public static func unknownExtensionMessage(_ path: String) -> String {
        let known = allCases.map { ".\($0.fileExtension) (\($0))" }.joined(separator: ", ")
        return "\(path): d2l does not know the extension .\(URL(fileURLWithPath: path).pathExtension); "
            + "name the output \(known) (also .raw, .vpc), or give --format \(allCases.map(\.rawValue).joined(separator: "|"))"
    }

    /// The usual file extension of the format.
    public var fileExtension: String {
        switch self {
        case .raw: return "img"
        case .vpc: return "vhd"
        case .containerdisk: return "oci.tar"
        default: return rawValue
        }
    }

    /// Detects the format from the file's magic bytes (QEMU's own probes, minus its guesswork).
    ///
    /// - Throws: `DiskModelError.unreadable` when the file cannot be opened.
    public static func detect(path: String) throws(DiskModelError) -> DiskFormat {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw .unreadable(path: path, reason: "cannot open it for reading")
        }
        defer { try? handle.close() }
        let head = (try? handle.read(upToCount: 512)) ?? Data()
        let size = (try? handle.seekToEnd()) ?? 0
        var footer = Data()
        if size >= 512 {
            try? handle.seek(toOffset: size - 512)
            footer = (try? handle.read(upToCount: 512)) ?? Data()
        }
        return detect(head: [UInt8](head), footer: [UInt8](footer))
    }

    /// The format of a file whose first and last 512 bytes are given: qcow2, VMDK, VDI, VHDX and
    /// VHD (vpc) by their magic numbers, raw otherwise.
    public static func detect(head: [UInt8], footer: [UInt8]) -> DiskFormat {
        func starts(_ bytes: [UInt8], _ magic: String, at offset: Int = 0) -> Bool {
            let magicBytes = Array(magic.utf8)
            return bytes.count >= offset + magicBytes.count
                && Array(bytes[offset..<offset + magicBytes.count]) == magicBytes
        }
        if head.starts(with: [0x51, 0x46, 0x49, 0xFB]) { return .qcow2 }
        if starts(head, "KDMV") || starts(head, "# Disk DescriptorFile") { return .vmdk }
        if head.count >= 0x44, Array(head[0x40..<0x44]) == [0x7F, 0x10, 0xDA, 0xBE] { return .vdi }
        if starts(head, "vhdxfile") { return .vhdx }
        if starts(head, "conectix") || starts(footer, "conectix") { return .vpc }
        return .raw
    }
}
