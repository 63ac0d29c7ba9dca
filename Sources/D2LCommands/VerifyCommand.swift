import ArgumentParser

// Placeholder: the verifier helper replaces this file.
struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "verify", abstract: "Boot a disk and check its boot stages.")
    @Argument var image: String
    func run() async throws { throw ExitCode(125) }
}
