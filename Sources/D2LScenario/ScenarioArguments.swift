import Foundation

/// `d2l verify --scenario FILE`: the scenario's verify section becomes options placed
/// before the user's own, so that an option given on the command line wins.
public enum ScenarioArguments {
    /// Expands `--scenario FILE` (or `--scenario=FILE`) in a `verify` command line.
    public static func expand(_ arguments: [String]) throws -> [String] {
        guard arguments.first == "verify" else { return arguments }
        var rest: [String] = []
        var files: [String] = []
        var i = 1
        while i < arguments.count {
            let arg = arguments[i]
            if arg == "--" {
                rest += arguments[i...]
                break
            }
            if arg == "--scenario", i + 1 < arguments.count {
                files.append(arguments[i + 1])
                i += 2
                continue
            }
            if arg.hasPrefix("--scenario=") {
                files.append(String(arg.dropFirst("--scenario=".count)))
                i += 1
                continue
            }
            rest.append(arg)
            i += 1
        }
        var expanded = ["verify"]
        for file in files {
            expanded += try ScenarioParser.parse(file: file, imagesDirectory: nil).verifyArguments
        }
        return expanded + rest
    }
}
