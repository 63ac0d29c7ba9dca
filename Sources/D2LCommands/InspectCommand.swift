import ArgumentParser

struct InspectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Show what the builder sees.")
    func run() async throws { throw ExitCode(1) }
}
