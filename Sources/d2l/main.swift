import D2LCommands

await D2LCommand.main()
