import ArgumentParser

/// The `d2l` command: container image in, bootable disk out, and proof that it boots.
public struct D2LCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "d2l",
        abstract: "Turn a container image into a bootable Linux disk image, and prove that it boots.",
        discussion: """
            d2l build writes a partitioned disk (FAT /boot with syslinux, ext4 root) from a \
            docker-archive, OCI layout or archive, rootfs tar or directory, without root, \
            loop devices or mounts. d2l verify boots a disk under QEMU through libvirt and \
            checks its serial console stage by stage.
            """,
        version: "0.1.0",
        subcommands: [
            BuildCommand.self, InspectCommand.self, VerifyCommand.self, TestCommand.self,
            BisectCommand.self,
        ]
    )
    public init() {}
}
