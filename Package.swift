// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "d2l",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "d2l", targets: ["d2l"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    ],
    targets: [
        // One system-library target per C library.
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

        // Shared plumbing: processes, temporary files, progress, digests.
        .target(name: "D2LSupport", dependencies: ["CCrypto"]),
        // Reading images and flattening layers.
        .target(name: "D2LImage", dependencies: ["CArchive", "D2LSupport"]),
        // Writing disks: partition table, ext4, FAT + syslinux, formats.
        .target(name: "D2LDisk", dependencies: ["CExt2fs", "D2LImage", "D2LSupport"]),
        // Booting a disk through libvirt and judging its serial transcript.
        .target(name: "D2LVerify", dependencies: ["CLibvirt", "CExt2fs", "D2LSupport"]),
        // Kernel bisection: kernel lists (bzImage, linux-image .deb), the search and its resumable state.
        .target(name: "D2LBisect", dependencies: ["D2LVerify", "D2LImage", "D2LSupport"]),
        // Scenarios, recipes and the regression matrix of `d2l test`.
        .target(
            name: "D2LScenario",
            dependencies: ["D2LSupport", .product(name: "Yams", package: "Yams")]),
        .target(
            name: "D2LCommands",
            dependencies: [
                "D2LImage", "D2LDisk", "D2LVerify", "D2LSupport", "D2LScenario", "D2LBisect",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .executableTarget(
            name: "d2l",
            dependencies: [
                "D2LCommands", "D2LScenario", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),

        .testTarget(name: "D2LImageTests", dependencies: ["D2LImage", "CArchive"]),
        .testTarget(name: "D2LDiskTests", dependencies: ["D2LDisk", "D2LImage", "CArchive", "CExt2fs"]),
        .testTarget(name: "D2LVerifyTests", dependencies: ["D2LVerify"], exclude: ["Transcripts"]),
        .testTarget(name: "D2LScenarioTests", dependencies: ["D2LScenario"]),
        .testTarget(name: "D2LBisectTests", dependencies: ["D2LBisect", "D2LVerify"]),
        .testTarget(name: "IntegrationTests", dependencies: ["D2LSupport", "d2l"]),
    ]
)
