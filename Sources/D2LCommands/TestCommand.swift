import ArgumentParser

struct TestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "test", abstract: "Build and verify scenarios.")
    func run() async throws { throw ExitCode(1) }
}
