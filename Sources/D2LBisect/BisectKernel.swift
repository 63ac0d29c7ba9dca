import D2LDiskModel
import D2LVerify
import Foundation

/// One kernel in a bisection: the bzImage, the initrd it boots with, and where that initrd came from.
public struct BisectKernel: Sendable, Codable, Equatable {
    /// What logs and `--good`/`--bad` call it: the path as given, or the file name.
    public var name: String
    public var kernel: String
    public var initrd: String?
    /// Why this initrd (or none) was chosen, said in the log so a surprising pairing is visible.
    public var initrdSource: String
    /// `uname -r` from the bzImage header.
    public var release: String
    /// The whole header version string.
    public var versionString: String
    /// Set when `initrd` is made with the image's own initramfs tools just before the kernel first boots.
    public var initrdBuild: InitrdBuild?

    /// How to make a kernel's initrd with the image's tools: its modules come from `package` (a linux-image
    /// .deb), or from the image itself when nil.
    public struct InitrdBuild: Sendable, Codable, Equatable {
        public var package: String?
        public init(package: String?) { self.package = package }
    }

    public init(
        name: String, kernel: String, initrd: String?, initrdSource: String, release: String, versionString: String
    ) {
        self.name = name
        self.kernel = kernel
        self.initrd = initrd
        self.initrdSource = initrdSource
        self.release = release
        self.versionString = versionString
    }

    /// How the initrd of each kernel is chosen.
    public enum InitrdChoice: Sendable, Equatable {
        /// The initrd beside the kernel (`vmlinuz-R` -> `initrd.img-R`, `initrd-R.img`, `initramfs-R.img`,
        /// `<kernel>.initrd`); none when there is none.
        case beside
        /// The same file for every kernel.
        case file(String)
        /// No initrd: the kernels have their disk and file system drivers built in.
        case none
    }

    /// Reads the header of `path` and pairs it with an initrd; throws `notAKernel` for anything else.
    public static func load(path: String, name: String? = nil, initrd choice: InitrdChoice) throws -> BisectKernel {
        let full = URL(fileURLWithPath: path).standardizedFileURL.path
        let image = try KernelImage(path: full)
        let initrd: String?
        let source: String
        switch choice {
        case .none:
            (initrd, source) = (nil, "none (--no-initrd)")
        case .file(let file):
            (initrd, source) = (URL(fileURLWithPath: file).standardizedFileURL.path, "--initrd")
        case .beside:
            if let found = besideInitrd(kernel: full) {
                (initrd, source) = (found, "beside the kernel")
            } else {
                (initrd, source) = (nil, "none: no initrd beside the kernel")
            }
        }
        return BisectKernel(
            name: name ?? path, kernel: full, initrd: initrd, initrdSource: source, release: image.release,
            versionString: image.versionString)
    }

    /// The names an initrd for `kernel` has beside it, most specific first.
    static func besideInitrdNames(kernelFile: String) -> [String] {
        var names = ["\(kernelFile).initrd", "\(kernelFile).initrd.img"]
        for prefix in ["vmlinuz-", "bzImage-", "vmlinux-"] where kernelFile.hasPrefix(prefix) {
            let suffix = String(kernelFile.dropFirst(prefix.count))
            names += ["initrd.img-\(suffix)", "initrd-\(suffix).img", "initramfs-\(suffix).img", "initrd-\(suffix)"]
        }
        return names
    }

    /// The initrd beside `kernel`, or nil.
    public static func besideInitrd(kernel: String) -> String? {
        let url = URL(fileURLWithPath: kernel)
        let directory = url.deletingLastPathComponent()
        for name in besideInitrdNames(kernelFile: url.lastPathComponent) {
            let candidate = directory.appendingPathComponent(name).path
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// The bzImages directly inside `directory` (initrds and other files are passed over), by file name;
    /// `package` loads the .deb files among them (path, name), when given.
    ///
    /// - Throws: `BisectError.badOption` when the directory cannot be listed; what `package` throws for a .deb.
    public static func discover(
        in directory: String, initrd choice: InitrdChoice,
        package: ((_ path: String, _ name: String) throws -> BisectKernel)? = nil
    ) throws -> [BisectKernel] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw BisectError.badOption("--kernels \(directory): cannot list it: \(error.localizedDescription)")
        }
        var kernels: [BisectKernel] = []
        for name in names.sorted(by: { KernelVersion($0) < KernelVersion($1) }) {
            let path = URL(fileURLWithPath: directory).appendingPathComponent(name).path
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else {
                continue
            }
            if let package, name.hasSuffix(".deb") {
                kernels.append(try package(path, name))
            } else if let kernel = try? load(path: path, name: name, initrd: choice) {
                kernels.append(kernel)
            }
        }
        return kernels
    }
}

/// Orders kernels by version (`KernelVersion`'s order: 5.10 < 6.1 < 6.12 and -rc2 < -rc10).
public enum KernelOrder {
    /// Release first, then name, both in kernel-version order.
    public static func sorted(_ kernels: [BisectKernel]) -> [BisectKernel] {
        kernels.sorted { a, b in
            if a.release != b.release { return KernelVersion(a.release) < KernelVersion(b.release) }
            return KernelVersion(a.name) < KernelVersion(b.name)
        }
    }
}
