import D2LCommands
import Foundation

@main
struct D2L {
    static func main() async {
        exit(await D2LMain.run(Array(CommandLine.arguments.dropFirst())))
    }
}
