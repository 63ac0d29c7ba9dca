import D2LSupport
import Foundation
import Testing

/// The file a disk is written to: no name until `commit`, an existing output replaced only when asked,
/// and nothing left by `discard`, whether anonymous (O_TMPFILE) or named (the fallback).
@Suite("Staged output file")
struct StagedFileTests {
    static func write(_ text: String, to file: StagedFile) throws {
        let fd = open(file.path, O_WRONLY | O_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
    }

    static func contents(_ path: String) -> String? {
        FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) }
    }

    @Test("named only by commit; an existing output is kept unless replacing", arguments: [true, false])
    func commitAndReplace(anonymous: Bool) throws {
        let dir = try BootLayoutTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let output = dir + "/disk.img"

        let first = try StagedFile(directory: dir, fallbackName: ".disk.img.tmp", anonymous: anonymous)
        #expect(first.isAnonymous == anonymous)
        try Self.write("first", to: first)
        // While it is written, the directory shows no disk (anonymous) or only the hidden name.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == (anonymous ? [] : [".disk.img.tmp"]))
        try first.commit(to: output, replace: false)
        #expect(Self.contents(output) == "first")

        let second = try StagedFile(directory: dir, fallbackName: ".disk.img.tmp", anonymous: anonymous)
        try Self.write("second", to: second)
        #expect(throws: StagedFileError.self) { try second.commit(to: output, replace: false) }
        #expect(Self.contents(output) == "first")
        try second.commit(to: output, replace: true)
        #expect(Self.contents(output) == "second")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["disk.img"])

        let third = try StagedFile(directory: dir, fallbackName: ".disk.img.tmp", anonymous: anonymous)
        try Self.write("third", to: third)
        third.discard()
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["disk.img"])
        #expect(Self.contents(output) == "second")
    }
}
