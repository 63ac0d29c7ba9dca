import D2LSupport
import Foundation
import Testing

/// The fuzzing corpus and every input the fuzzer ever found failing (Tests/Fuzz), replayed through
/// the same parsers as `Scripts/fuzz` drives, without the fuzzer: none may crash the process.
@Suite struct FuzzReplayTests {
    @Test func everySavedFuzzInputIsParsedWithoutACrash() async throws {
        let binary = ((try BuildInputs.d2lBinary()) as NSString).deletingLastPathComponent + "/d2l-fuzz"
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().path + "/Fuzz"
        var inputs: [String] = []
        for directory in ["corpus", "crashes"] {
            let path = root + "/" + directory
            for name in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] where !name.hasSuffix(".md") {
                inputs.append(path + "/" + name)
            }
        }
        #expect(inputs.count >= 7, "the corpus is missing: \(root)")
        let result = await ProcessRunner.capture([binary] + inputs.sorted())
        #expect(result.status == 0, "d2l-fuzz exited \(result.status): \(result.stderr.suffix(2000))")
        #expect(result.stdout.contains("\(inputs.count) inputs replayed"))
    }
}
