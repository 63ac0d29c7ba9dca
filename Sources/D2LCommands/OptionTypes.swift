import ArgumentParser
import D2LBisect
import D2LDisk
import D2LDiskModel
import D2LScenario
import D2LVerify

// Options with a fixed set of values parse into these enums; --help lists the values.
extension Accelerator: ExpressibleByArgument {}
extension DiskBus: ExpressibleByArgument {}
extension GuestNetwork: ExpressibleByArgument {}
extension DiskFormat: ExpressibleByArgument {}
extension FailedUnitsPolicy: ExpressibleByArgument {}
extension KernelWarningsPolicy: ExpressibleByArgument {}
extension BisectOrder: ExpressibleByArgument {}
extension ContainerEngine: ExpressibleByArgument {}
extension BootMode: ExpressibleByArgument {}
extension PartitionTable.Scheme: ExpressibleByArgument {}
extension Firmware: ExpressibleByArgument {}
extension NetworkMode: ExpressibleByArgument {}

extension Platform {
    /// `--platform` as the OCI image spec spells platforms; a usage error naming the form otherwise.
    static func argument(_ text: String) throws -> Platform {
        do {
            return try Platform(parsing: text)
        } catch {
            throw ValidationError("\(error)")
        }
    }
}
