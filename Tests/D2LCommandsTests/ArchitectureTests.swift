import D2LSupport
import Foundation
import Testing

/// What `d2l build` says about an image's architecture: the one asked for with --platform, one d2l
/// cannot boot, a config that does not match the programs.
@Suite("Image architecture", .serialized)
struct ArchitectureTests {
    static func archive(architecture: String, in dir: String) throws -> String {
        let path = dir + "/image-\(architecture).tar"
        try BuildInputs.write(
            try BuildInputs.dockerArchive(layers: [BuildInputs.tar(BuildInputs.bootable)], architecture: architecture), to: path)
        return path
    }

    static func build(_ arguments: [String], dir: String) async throws -> (status: Int32, stderr: String) {
        try await BuildInputs.d2l(["build"] + arguments + ["-o", dir + "/disk.img", "-q", "--force"])
    }

    @Test("a single image of another platform than --platform asks for is refused, naming both; without it, refused for what it is")
    func platformMismatch() async throws {
        let dir = try BuildInputs.scratch("architecture-1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let arm64 = try Self.archive(architecture: "arm64", in: dir)
        let asked = try await Self.build([arm64, "--platform", "linux/amd64"], dir: dir)
        #expect(asked.status == 1)
        #expect(asked.stderr.contains("a linux/arm64 image, not the linux/amd64 asked for with --platform"), "\(asked.stderr)")
        // Its programs are x86-64 (BuildInputs.bootable): the config lies, and the build says so.
        let mislabelled = try await Self.build([arm64], dir: dir)
        #expect(mislabelled.status == 1)
        #expect(mislabelled.stderr.contains("the image's config says arm64 but its init is an amd64 program"), "\(mislabelled.stderr)")
        #expect(mislabelled.stderr.contains("mislabelled"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/disk.img"))
    }

    @Test("an image of an architecture d2l does not boot is refused before writing, saying which ones it can")
    func unsupportedArchitecture() async throws {
        let dir = try BuildInputs.scratch("architecture-2")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s390x = try Self.archive(architecture: "s390x", in: dir)
        let result = try await Self.build([s390x], dir: dir)
        #expect(result.status == 1)
        #expect(result.stderr.contains("the image is for s390x") && result.stderr.contains("linux/amd64 or linux/arm64"), "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/disk.img"))
        let amd64 = try Self.archive(architecture: "amd64", in: dir)
        let good = try await Self.build([amd64, "--platform", "linux/x86_64"], dir: dir)
        #expect(good.status == 0, "\(good.stderr)")
    }
}
