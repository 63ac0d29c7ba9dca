import ArgumentParser

struct BuildCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "build", abstract: "Build a bootable disk image.")
    func run() async throws { throw ExitCode(1) }
}
