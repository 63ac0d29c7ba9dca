import ArgumentParser

// Placeholder: the kernel-bisection work replaces this file.
struct BisectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bisect", abstract: "Find the first kernel that does not boot.")
    func run() async throws { throw ExitCode(125) }
}
