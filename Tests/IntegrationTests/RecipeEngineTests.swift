import Foundation
import Testing

/// Recipes built with buildah, the third engine besides podman and docker: its build, its saved archives
/// and its root file system tar, and the disk d2l makes from them booting to the scenario's login.
@Suite(.serialized) struct RecipeEngineTests {
    @Test(.timeLimit(.minutes(15))) func recipeBuiltWithBuildahBoots() async throws {
        let buildah = try await Fixtures.run(["sh", "-c", "command -v buildah"])
        try #require(buildah.status == 0, "buildah is not installed (Scripts/install-deps installs it)")
        // A cache of its own, so that the recipe is really built by buildah, not taken from podman's run.
        let cache = try Fixtures.scratchDirectory("buildah-cache")
        let built = try await Fixtures.run(
            [Fixtures.repositoryRoot + "/Scripts/build-recipe", "--engine", "buildah", "busybox-tiny"],
            environment: ["D2L_CACHE": cache])
        #expect(built.status == 0, "\(built.stderr)")
        #expect(built.stderr.contains("build-recipe: buildah build busybox-tiny"))
        let docker = built.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let stem = String(docker.dropLast(".docker.tar".count))
        for path in [docker, stem + ".oci.tar", stem + ".export.tar"] {
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
            #expect(size > 1 << 20, "\(path): \(size) bytes")
        }
        // The root file system tar holds the system itself, not an image's layers.
        let listing = try await Fixtures.run(["tar", "-tf", stem + ".export.tar"])
        #expect(listing.stdout.split(separator: "\n").contains { $0 == "./bin/busybox" || $0 == "bin/busybox" })
        #expect(!listing.stdout.contains("manifest.json"))

        // d2l reads both saved archives and the export; the OCI archive's disk boots as the scenario says.
        for input in [docker, stem + ".export.tar"] {
            let inspect = try await Fixtures.d2l(["inspect", input])
            #expect(inspect.status == 0, "\(input): \(inspect.stderr)")
        }
        let disk = cache + "/busybox-tiny.img"
        let build = try await Fixtures.d2l(["build", stem + ".oci.tar", "-o", disk, "--root-password-empty", "--headroom", "16M"])
        #expect(build.status == 0, "\(build.stderr)")
        let before = Fixtures.orphanedQEMUProcesses()
        let verify = try await Fixtures.d2l([
            "verify", disk, "--scenario", Fixtures.repositoryRoot + "/Scenarios/busybox-tiny.yaml", "--timeout", "600",
        ])
        #expect(verify.status == 0, "\(verify.stdout)\n\(verify.stderr)")
        #expect(Fixtures.orphanedQEMUProcesses().subtracting(before).isEmpty)
        try? FileManager.default.removeItem(atPath: cache)
    }
}
