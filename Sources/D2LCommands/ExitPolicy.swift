import ArgumentParser
import D2LSupport
import Foundation

/// How a command's outcome becomes its exit status: the one policy every d2l command follows.
///
/// An error's `ErrorCategory` decides: bad options found while parsing (`parse`), input the user
/// must change found later (`usage`), work that could not be done (`couldNotTest`), and work done
/// whose answer is no (`failed`). Success is 0.
public struct ExitPolicy: Sendable, Equatable {
    /// Options that do not parse or validate.
    public var parse: Int32
    /// Input found unusable while running (an image that cannot boot, an invalid scenario file).
    public var usage: Int32
    public var couldNotTest: Int32
    public var failed: Int32
    /// What the error message says before the error, per category.
    public var couldNotTestLabel: String

    /// `d2l build` and `d2l inspect`: 64 (EX_USAGE, sysexits(3)) for bad options, 1 for anything that
    /// stops the work.
    public static let builder = ExitPolicy(parse: 64, usage: 1, couldNotTest: 1, failed: 1, couldNotTestLabel: "error")
    /// `d2l verify` and `d2l bisect`, which `git bisect run` calls: 125 ("cannot test this commit",
    /// git-bisect(1)) for everything that is not a verdict, 1 for a disk or kernel that does not boot.
    public static let verdict = ExitPolicy(
        parse: 125, usage: 125, couldNotTest: 125, failed: 1, couldNotTestLabel: "could not test")
    /// `d2l test`: 64 for bad options, 2 when scenario files cannot be used, 1 when a scenario failed.
    public static let matrix = ExitPolicy(parse: 64, usage: 2, couldNotTest: 2, failed: 1, couldNotTestLabel: "error")

    /// The exit status of an error of `category` met while running.
    public func code(for category: ErrorCategory) -> Int32 {
        switch category {
        case .usage: return usage
        case .couldNotTest: return couldNotTest
        case .failed: return failed
        }
    }
}

/// A d2l subcommand and its exit policy.
protocol PolicedCommand: AsyncParsableCommand {
    static var exitPolicy: ExitPolicy { get }
}

/// Runs a command's checks of its options; what they throw becomes a usage error (exit `parse`).
func usageErrors(_ check: () throws -> Void) throws {
    do {
        try check()
    } catch {
        throw ValidationError("\(error)")
    }
}

/// The outcome was reported by the command itself (a verdict, a table); only the exit status is left.
struct Reported: CategorizedError {
    var category: ErrorCategory
    var description: String { "" }
}

/// Parses, runs and maps the outcome to an exit status, for `d2l` and for tests.
public enum D2LMain {
    /// The policy of the subcommand `arguments` names (the builder's for `d2l` alone).
    static func policy(for arguments: [String]) -> ExitPolicy {
        let name = arguments.first { !$0.hasPrefix("-") }
        for case let command as any PolicedCommand.Type in D2LCommand.configuration.subcommands
        where command.configuration.commandName == name {
            return command.exitPolicy
        }
        return .builder
    }

    /// Runs `d2l ARGUMENTS` in this process; returns the exit status. Messages go to stderr (help to stdout).
    public static func run(_ arguments: [String]) async -> Int32 {
        let policy = policy(for: arguments)
        var command: any ParsableCommand
        do {
            command = try D2LCommand.parseAsRoot(arguments)
        } catch {
            let code = D2LCommand.exitCode(for: error)
            let message = D2LCommand.fullMessage(for: error)
            if code == .success {
                print(message)
                return 0
            }
            FileHandle.standardError.write(Data((message + "\n").utf8))
            return policy.parse
        }
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            return 0
        } catch let exit as ExitCode {
            return exit.rawValue
        } catch where D2LCommand.exitCode(for: error) == .success {
            // `d2l help build` and `--help` after a subcommand end as a help request thrown from run().
            print(D2LCommand.fullMessage(for: error))
            return 0
        } catch {
            let category = error.errorCategory
            let text = "\(error)"
            if !text.isEmpty {
                let name = (type(of: command) as any ParsableCommand.Type).configuration.commandName ?? "d2l"
                let label = category == .couldNotTest ? policy.couldNotTestLabel : "error"
                var message = "d2l \(name): \(label): \(text)"
                if let cause = (error as? any CategorizedError)?.cause { message += "\n  cause: \(cause)" }
                FileHandle.standardError.write(Data((message + "\n").utf8))
            }
            return policy.code(for: category)
        }
    }
}
