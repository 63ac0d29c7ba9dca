import D2LDiskModel
import Foundation

extension StagePlan {
    /// Doubles every stage's deadline, for a guest of another architecture than the host's: under
    /// TCG its firmware and kernel take about twice as long as a guest of the host's own.
    public mutating func allowForEmulation() {
        for index in stages.indices { stages[index].deadline = stages[index].deadline * 2 }
    }

    /// For a direct kernel boot: no bootloader stage, and the kernel stage accepts only `kernel`'s banner.
    ///
    /// Any other `Linux version` line fails the run at once ("another kernel booted"), so a stale or
    /// mixed-up kernel is a failure even when the rest of the boot goes well.
    public mutating func bootDirectly(_ kernel: KernelImage) {
        stages.removeAll { $0.name == "bootloader" }
        let banner = ConsolePattern(builtIn: kernel.bannerPattern)
        // The banner proves which kernel booted: it must be seen, even when a later stage is.
        if let index = stages.firstIndex(where: { $0.name == "kernel" }) {
            stages[index].pattern = banner
            stages[index].isRequired = true
        } else {
            stages.insert(
                BootStage(name: "kernel", pattern: banner, deadline: .seconds(60), isBanner: true, isRequired: true), at: 0)
        }
        failures.removeAll { $0.name == "bootloader error" || $0.name == "another kernel booted" }
        failures.append(
            FailurePattern(
                name: "another kernel booted", pattern: ConsolePattern(builtIn: kernel.otherKernelPattern), source: .kernel))
    }
}
