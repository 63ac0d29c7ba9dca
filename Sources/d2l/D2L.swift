import ArgumentParser
import D2LCommands
import D2LScenario
import Foundation

@main
struct D2L {
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        let expanded: [String]
        do {
            expanded = try ScenarioArguments.expand(arguments)
        } catch {
            FileHandle.standardError.write(Data("Error: \(error)\n".utf8))
            exit(125)  // only `d2l verify` takes --scenario: "could not test"
        }
        do {
            var command = try D2LCommand.parseAsRoot(expanded)
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            // `d2l verify` is run by `git bisect run`: a usage error must say "cannot test" (125),
            // never "bad" (1) or an exit status bisect does not understand (64).
            let code = D2LCommand.exitCode(for: error)
            if code.rawValue == 64, CommandLine.arguments.dropFirst().first == "verify" {
                FileHandle.standardError.write(Data((D2LCommand.fullMessage(for: error) + "\n").utf8))
                exit(125)
            }
            D2LCommand.exit(withError: error)
        }
    }
}
