import Foundation

/// /etc/fstab: d2l owns the entries for / and /boot; every other entry of the image's own (a tmpfs
/// on /tmp, a swap file, bind mounts) is kept as it was, with a warning when it names a device this
/// disk does not have (the boot would wait for it).
struct FstabMerge {
    /// The devices this disk has, as fstab may name them.
    struct Devices {
        /// File system UUIDs (ext4 root, FAT volume ID as XXXX-XXXX), compared without case.
        var uuids: Set<String>
        var labels: Set<String>
        var partUUIDs: Set<String>
        var partLabels: Set<String>
    }

    var rootLine: String
    var bootLine: String
    var devices: Devices

    /// The merged file, and the warnings about kept entries.
    ///
    /// - Parameter fileExists: whether a path (a swap file, a bind mount's source) exists in the image.
    func merge(_ existing: String?, fileExists: (String) -> Bool) -> (text: String, warnings: [String]) {
        var kept: [String] = []
        var warnings: [String] = []
        for line in (existing ?? "").split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") {
                // debootstrap's placeholder and d2l's own header say nothing true any more.
                if trimmed.hasPrefix("# UNCONFIGURED FSTAB") || trimmed.hasPrefix("# Written by d2l build") { continue }
                kept.append(line)
                continue
            }
            let fields = trimmed.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard fields.count >= 2 else {
                kept.append(line)
                continue
            }
            let mountPoint = Self.unescape(fields[1])
            if mountPoint == "/" || mountPoint == "/boot" {
                continue
            }
            kept.append(line)
            if let problem = problem(spec: fields[0], type: fields.count > 2 ? fields[2] : "", options: fields.count > 3 ? fields[3] : "", fileExists: fileExists) {
                let where_ = fields.count > 2 && fields[2] == "swap" ? "swap" : mountPoint
                let nofail = (fields.count > 3 ? fields[3] : "").split(separator: ",").contains("nofail")
                warnings.append(
                    "fstab: kept the image's entry for \(where_), but \(problem)"
                        + (nofail ? " (it has nofail: the boot goes on without it)" : ": the boot will wait for it; add nofail or remove the entry"))
            }
        }
        while kept.last?.trimmingCharacters(in: .whitespaces).isEmpty == true { kept.removeLast() }
        while kept.first?.trimmingCharacters(in: .whitespaces).isEmpty == true { kept.removeFirst() }
        var text = "# Written by d2l build: / and /boot are d2l's"
        text += kept.isEmpty ? ".\n" : "; the image's own entries follow.\n"
        text += rootLine + "\n" + bootLine + "\n"
        if !kept.isEmpty { text += "\n" + kept.joined(separator: "\n") + "\n" }
        return (text, warnings)
    }

    /// Why `spec` names nothing on this disk, or nil when it does (or names no device at all).
    func problem(spec: String, type: String, options: String, fileExists: (String) -> Bool) -> String? {
        func value(_ prefix: String) -> String? {
            spec.hasPrefix(prefix) ? String(spec.dropFirst(prefix.count)).trimmingCharacters(in: CharacterSet(charactersIn: "\"")) : nil
        }
        if let uuid = value("UUID=") {
            return devices.uuids.contains(uuid.lowercased()) ? nil : "UUID=\(uuid) is no file system of this disk"
        }
        if let label = value("LABEL=") {
            return devices.labels.contains(label) ? nil : "LABEL=\(label) is no file system of this disk"
        }
        if let uuid = value("PARTUUID=") {
            return devices.partUUIDs.contains(uuid.lowercased()) ? nil : "PARTUUID=\(uuid) is no partition of this disk"
        }
        if let label = value("PARTLABEL=") {
            return devices.partLabels.contains(label) ? nil : "PARTLABEL=\(label) is no partition of this disk"
        }
        if spec.hasPrefix("/dev/") {
            let ours = ["/dev/vda1", "/dev/vda2", "/dev/sda1", "/dev/sda2", "/dev/nvme0n1p1", "/dev/nvme0n1p2"]
            if ours.contains(spec) { return nil }
            let blockPrefixes = ["/dev/sd", "/dev/vd", "/dev/hd", "/dev/xvd", "/dev/nvme", "/dev/mmcblk", "/dev/disk/", "/dev/mapper/", "/dev/md"]
            return blockPrefixes.contains(where: spec.hasPrefix) ? "\(spec) is no partition of this disk (it has two: /boot and /)" : nil
        }
        if spec.hasPrefix("/"), type == "swap" || options.split(separator: ",").contains("bind") {
            return fileExists(String(spec.dropFirst())) ? nil : "\(spec) is not in the image"
        }
        return nil
    }

    /// fstab's octal escapes (`\040` for a space).
    static func unescape(_ field: String) -> String {
        guard field.contains("\\") else { return field }
        var out = ""
        var chars = [Character](field)[...]
        while let c = chars.popFirst() {
            if c == "\\", chars.count >= 3, let code = UInt8(String(chars.prefix(3)), radix: 8) {
                out.append(Character(UnicodeScalar(code)))
                chars = chars.dropFirst(3)
            } else {
                out.append(c)
            }
        }
        return out
    }
}
