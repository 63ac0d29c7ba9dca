import Foundation
import Testing
@testable import D2LVerify

@Suite struct DomainScratchTests {
    /// A kernel given as a symlink is copied as its contents, and giving the copy to QEMU's user
    /// leaves the symlink's target (a user's file, a cache entry) as it was.
    @Test func aSymlinkedFileIsCopiedAsItsContentsAndItsTargetKeepsItsOwner() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("d2l-scratch-test-\(getpid())").path
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: base) }
        let real = base + "/vmlinuz-real"
        #expect(FileManager.default.createFile(atPath: real, contents: Data("kernel".utf8), attributes: [.posixPermissions: 0o600]))
        try FileManager.default.createSymbolicLink(atPath: base + "/vmlinuz", withDestinationPath: "vmlinuz-real")
        let owner = try FileManager.default.attributesOfItem(atPath: real)[.ownerAccountID] as? NSNumber

        let identity = (try? QEMUIdentity.forThisProcess()) ?? QEMUIdentity(uid: geteuid(), gid: getegid())
        let scratch = try DomainScratch.create(for: "d2l-verify-scratch-\(getpid())", owner: identity, parent: base)
        defer { scratch.remove() }
        let copy = try scratch.copy(base + "/vmlinuz", as: "kernel")

        let attributes = try FileManager.default.attributesOfItem(atPath: copy)
        #expect(attributes[.type] as? FileAttributeType == .typeRegular)
        #expect((attributes[.ownerAccountID] as? NSNumber)?.uint32Value == identity.uid)
        #expect(FileManager.default.contents(atPath: copy) == Data("kernel".utf8))
        #expect(try FileManager.default.attributesOfItem(atPath: real)[.ownerAccountID] as? NSNumber == owner)
        scratch.remove()
        #expect(!FileManager.default.fileExists(atPath: scratch.path))
    }
}
