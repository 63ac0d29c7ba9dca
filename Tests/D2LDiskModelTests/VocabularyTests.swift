import Testing
@testable import D2LDiskModel

@Suite struct KernelVersionTests {
    @Test func ordersAsKernelReleases() {
        func v(_ text: String) -> KernelVersion { KernelVersion(text) }
        #expect(v("6.1.0-9-amd64") < v("6.1.0-10-amd64"))
        #expect(!(v("6.1.0-10-amd64") < v("6.1.0-9-amd64")))
        #expect(v("5.19.17") < v("6.0"))
        #expect(v("6.1") < v("6.1.1"))
        #expect(!(v("6.1.0-10-amd64") < v("6.1.0-10-amd64")))
        #expect(v("4.9.0-rc1") < v("4.9.0-1"))
        #expect(v("6.8-rc1") < v("6.8"))
        #expect(v("6.8-rc2") < v("6.8-rc10"))
        #expect(v("6.8-rc1") < v("6.8-rc1-00123-gabcdef"))
        let releases = ["6.12.117+deb13-amd64", "5.10.0-32-amd64", "6.1.0-50-amd64", "6.1.0-9-amd64", "6.10.0-rc2"]
        #expect(releases.map { v($0) }.sorted().map { $0.text } == [
            "5.10.0-32-amd64", "6.1.0-9-amd64", "6.1.0-50-amd64", "6.10.0-rc2", "6.12.117+deb13-amd64",
        ])
    }
}

@Suite struct PlatformTests {
    @Test func normalizesAsContainerdDoes() throws {
        #expect(try Platform(parsing: "linux/x86_64").description == "linux/amd64")
        #expect(try Platform(parsing: "linux/x86-64").description == "linux/amd64")
        #expect(try Platform(parsing: "linux/aarch64").description == "linux/arm64")
        #expect(try Platform(parsing: "linux/arm64/v8").description == "linux/arm64")
        #expect(try Platform(parsing: "linux/armhf").description == "linux/arm/v7")
        #expect(try Platform(parsing: "linux/arm").description == "linux/arm/v7")
        #expect(try Platform(parsing: "Linux/AMD64").description == "linux/amd64")
        #expect(try Platform(parsing: "arm64").description == "linux/arm64")
        #expect(try Platform(parsing: "linux/amd64").bootableArchitecture == .amd64)
        #expect(try Platform(parsing: "linux/riscv64").bootableArchitecture == nil)
    }

    @Test func refusesWhatIsNotAPlatform() {
        for text in ["nonsense", "", "linux/", "/amd64", "linux/amd64/v2/extra", "linux amd64", "linux/amd64;rm"] {
            #expect(throws: Platform.ParseError.self, "\(text)") { try Platform(parsing: text) }
        }
    }

    @Test func matchesImageConfigsWhateverTheirSpelling() {
        let arm = Architecture.arm64.platform
        #expect(arm.matches(os: "linux", architecture: "aarch64", variant: "v8"))
        #expect(arm.matches(os: "linux", architecture: "arm64", variant: nil))
        #expect(!arm.matches(os: "linux", architecture: "amd64", variant: nil))
        #expect(Architecture.amd64.platform.matches(os: nil, architecture: nil, variant: nil))
    }

    @Test func readsTheArchitectureOfAnELFHeader() {
        var elf = [UInt8](repeating: 0, count: 20)
        elf.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        elf[18] = 183
        #expect(Architecture(elfHeader: elf) == .arm64)
        elf[18] = 62
        #expect(Architecture(elfHeader: elf) == .amd64)
        elf[18] = 40
        #expect(Architecture(elfHeader: elf) == nil)
        #expect(Architecture(elfHeader: [0x7F]) == nil)
    }
}
