// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "d2l",
    // Linux is the target; the macOS floor only states the Swift features used (Synchronization.Mutex).
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "d2l", targets: ["d2l"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.0"),
    ],
    targets: [
        // One system-library target per C library, each imported by one Swift module only.
        .systemLibrary(
            name: "CArchive", pkgConfig: "libarchive",
            providers: [.apt(["libarchive-dev"])]),
        .systemLibrary(
            name: "CExt2fs", pkgConfig: "ext2fs",
            providers: [.apt(["libext2fs-dev"])]),
        .systemLibrary(
            name: "CLibvirt", pkgConfig: "libvirt",
            providers: [.apt(["libvirt-dev"])]),
        .systemLibrary(
            name: "CCrypto", pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev", "libcrypt-dev"])]),

        // The calling thread's CPU affinity (needs _GNU_SOURCE, kept out of the shared C headers).
        .target(name: "CThreadAffinity"),

        // Shared plumbing: processes, temporary files, progress, digests, error categories.
        .target(
            name: "D2LSupport",
            dependencies: ["CCrypto", .product(name: "Subprocess", package: "swift-subprocess")]),
        // ext2/3/4 through libext2fs: the writer the builder fills, the reader the disk model uses.
        .target(name: "D2LExt4", dependencies: ["CExt2fs", "D2LSupport"]),
        // The disk model: formats, platforms, partition tables (MBR, GPT) and their roles, kernel
        // versions, init systems, os-release, and a disk opened once to read them back.
        .target(name: "D2LDiskModel", dependencies: ["D2LExt4", "D2LSupport"]),
        // Reading images and flattening layers.
        .target(name: "D2LImage", dependencies: ["CArchive", "D2LDiskModel", "D2LSupport"]),
        // Writing disks: partitions, ext4 from the layers, FAT + bootloaders, formats.
        .target(name: "D2LDisk", dependencies: ["D2LExt4", "D2LDiskModel", "D2LImage", "D2LSupport"]),
        // Booting a disk through libvirt and judging its serial transcript.
        .target(name: "D2LVerify", dependencies: ["CArchive", "CLibvirt", "CThreadAffinity", "D2LDiskModel", "D2LSupport"]),
        // Kernel bisection: kernel lists (bzImage, linux-image .deb), the search and its resumable state.
        .target(name: "D2LBisect", dependencies: ["D2LVerify", "D2LDiskModel", "D2LImage", "D2LSupport"]),
        // Scenarios, recipes and the regression matrix of `d2l test`.
        .target(
            name: "D2LScenario",
            dependencies: ["D2LSupport", "D2LDiskModel", "D2LVerify", .product(name: "Yams", package: "Yams")]),
        .target(
            name: "D2LCommands",
            dependencies: [
                "D2LImage", "D2LDisk", "D2LDiskModel", "D2LVerify", "D2LSupport", "D2LScenario", "D2LBisect",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .executableTarget(name: "d2l", dependencies: ["D2LCommands"]),
        // libFuzzer's target for the parsers of untrusted bytes (Scripts/fuzz), and a replayer of saved inputs.
        .executableTarget(name: "d2l-fuzz", dependencies: ["D2LImage", "D2LDiskModel", "D2LVerify", "D2LBisect"]),

        .testTarget(name: "D2LDiskModelTests", dependencies: ["D2LDiskModel", "D2LExt4", "D2LSupport"]),
        .testTarget(name: "D2LImageTests", dependencies: ["D2LImage", "D2LDiskModel", "CArchive"]),
        .testTarget(
            name: "D2LDiskTests", dependencies: ["D2LDisk", "D2LDiskModel", "D2LExt4", "D2LImage", "CArchive", "CExt2fs"]),
        .testTarget(name: "D2LVerifyTests", dependencies: ["D2LVerify", "D2LDiskModel"], exclude: ["Transcripts"]),
        .testTarget(name: "D2LScenarioTests", dependencies: ["D2LScenario", "D2LVerify"]),
        .testTarget(name: "D2LBisectTests", dependencies: ["D2LBisect", "D2LVerify", "D2LDiskModel"]),
        .testTarget(
            name: "D2LCommandsTests",
            // d2l: the fault and malformed-input tests run the built binary (kill -9 needs a process);
            // d2l-fuzz: the saved fuzz inputs are replayed through it.
            dependencies: [
                "D2LCommands", "D2LSupport", "D2LVerify", "D2LDiskModel", "D2LBisect", "D2LScenario", "d2l", "d2l-fuzz",
            ]),
        .testTarget(name: "IntegrationTests", dependencies: ["D2LSupport", "D2LVerify", "d2l"]),
    ]
)
