import D2LCommands

@main
struct D2L {
    static func main() async {
        await D2LCommand.main(nil)
    }
}
