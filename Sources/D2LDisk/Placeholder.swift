enum D2LDiskPlaceholder {}
