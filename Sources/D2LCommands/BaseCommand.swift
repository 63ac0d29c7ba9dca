import ArgumentParser

struct BaseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "base", abstract: "Make a base image.")
    func run() async throws { throw ExitCode(1) }
}
