import D2LBisect
import D2LDiskModel
import D2LImage
import D2LVerify
import Foundation

/// Feeds untrusted bytes to d2l's own parsers: libFuzzer's target when built with
/// `Scripts/fuzz` (`-sanitize=fuzzer`, `-DFUZZING`), and a replayer of saved inputs otherwise
/// (`d2l-fuzz FILE...`), which is how a crash the fuzzer found is reproduced and kept as a test.
///
/// The first byte of an input picks the parser, the rest is its input:
/// 0 a docker/OCI archive (the tar index, manifest.json, index.json, OCI manifests and image
///   configs, then every layer's tar headers through libarchive); 1 an MBR or GPT partition table;
/// 2 a bzImage header; 3 a .deb's ar archive. Errors are the expected outcome for bad input;
/// only a crash, a sanitizer report or a hang is a finding.
enum FuzzTarget {
    /// Where inputs are written for the parsers that read files: one folder per process, removed at exit
    /// (libFuzzer ends with exit(3), on its time limit as on a finding).
    static let scratch: String = {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("d2l-fuzz-\(getpid())").path
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: FuzzTarget.scratch) }
        return path
    }()

    static func run(_ bytes: UnsafeRawBufferPointer) {
        guard let selector = bytes.first else { return }
        let input = UnsafeRawBufferPointer(rebasing: bytes.dropFirst())
        switch selector % 4 {
        case 0: imageArchive(input)
        case 1: partitionTable(input)
        case 2: kernelHeader(input)
        default: debianPackage(input)
        }
    }

    /// The bytes as a file, for the parsers that read from a path.
    static func file(_ input: UnsafeRawBufferPointer, named name: String) -> String {
        let path = scratch + "/" + name
        _ = FileManager.default.createFile(atPath: path, contents: Data(input))
        return path
    }

    static func imageArchive(_ input: UnsafeRawBufferPointer) {
        let path = file(input, named: "image.tar")
        guard let image = try? ImageReader.open(path: path) else { return }
        defer { image.removeOwnedFiles() }
        for layer in image.layers {
            guard let stream = try? layer.open(headersOnly: true) else { continue }
            var entries = 0
            while entries < 10_000, (try? stream.next()) != nil { entries += 1 }
            try? stream.finish()
        }
    }

    static func partitionTable(_ input: UnsafeRawBufferPointer) {
        let disk = [UInt8](input)
        _ = try? PartitionTable.read(diskBytes: UInt64(disk.count), path: "fuzz.img") { offset, count in
            guard offset <= UInt64(disk.count), count >= 0, UInt64(count) <= UInt64(disk.count) - offset else { return nil }
            return Array(disk[Int(offset)..<Int(offset) + count])
        }
    }

    static func kernelHeader(_ input: UnsafeRawBufferPointer) {
        _ = try? KernelImage(path: file(input, named: "vmlinuz"))
    }

    static func debianPackage(_ input: UnsafeRawBufferPointer) {
        _ = try? DebianPackage.members(path: file(input, named: "package.deb"))
    }
}

#if FUZZING
/// libFuzzer's entry point: one input per call (its `main` comes from libFuzzer).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzTarget.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
/// Replays saved inputs (`d2l-fuzz FILE...`): a crash the fuzzer found, reproduced without it.
@main struct FuzzReplay {
    static func main() {
        let files = CommandLine.arguments.dropFirst()
        guard !files.isEmpty else {
            FileHandle.standardError.write(Data("usage: d2l-fuzz INPUT... (replays saved fuzz inputs; Scripts/fuzz fuzzes)\n".utf8))
            exit(64)
        }
        for path in files {
            guard let data = FileManager.default.contents(atPath: path) else {
                FileHandle.standardError.write(Data("d2l-fuzz: cannot read \(path)\n".utf8))
                exit(66)
            }
            data.withUnsafeBytes { FuzzTarget.run($0) }
        }
        print("d2l-fuzz: \(files.count) inputs replayed, no crash")
    }
}
#endif
