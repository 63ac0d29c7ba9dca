import D2LVerify
import Foundation

/// The real verdict function of a bisection: boots the disk's root file system with each kernel
/// (direct kernel boot) and turns the report into good, bad or skip.
public struct KernelBootJudge: Sendable {
    public let hypervisor: any Hypervisor
    /// The machine every kernel boots in; its `directBoot` is filled in per kernel.
    public let machine: MachineSpec
    public let plan: StagePlan
    /// Root device for the kernel command line of a kernel with an initrd (`UUID=...`), and of one without.
    public let root: (withInitrd: String, withoutInitrd: String)
    public let append: String?
    /// Where each boot's raw console goes; nil keeps none.
    public let transcriptDirectory: String?
    /// Makes the initrd of a kernel whose `initrdBuild` is set, when the file is not there yet.
    public typealias InitrdMaker = @Sendable (BisectKernel) async throws -> Void
    public let makeInitrd: InitrdMaker?

    public init(
        hypervisor: any Hypervisor, machine: MachineSpec, plan: StagePlan,
        root: (withInitrd: String, withoutInitrd: String), append: String?,
        transcriptDirectory: String?, makeInitrd: InitrdMaker? = nil
    ) {
        self.makeInitrd = makeInitrd
        self.hypervisor = hypervisor
        self.machine = machine
        self.plan = plan
        self.root = root
        self.append = append
        self.transcriptDirectory = transcriptDirectory
    }

    /// Boots `kernel` once. Never throws: what stops a test is a skip, with the reason.
    public func judge(
        _ kernel: BisectKernel, index: Int, attempt: Int,
        progress: @escaping @Sendable (VerifyProgress) -> Void = { _ in }
    ) async -> BootAttempt {
        let start = ContinuousClock.now
        func skip(_ reason: String) -> BootAttempt {
            BootAttempt(verdict: .skip, reason: reason, seconds: (ContinuousClock.now - start).seconds)
        }
        let image: KernelImage
        do {
            image = try KernelImage(path: kernel.kernel)
        } catch {
            return skip("\(error)")
        }
        guard image.architecture == machine.architecture else {
            return skip("\(kernel.kernel) is an \(image.architecture) kernel; this bisection boots \(machine.architecture) kernels")
        }
        guard image.versionString == kernel.versionString else {
            return skip("\(kernel.kernel) changed since the bisection started: it is now \(image.versionString)")
        }
        if let initrd = kernel.initrd, kernel.initrdBuild != nil, !FileManager.default.fileExists(atPath: initrd) {
            guard let makeInitrd else { return skip("\(initrd): no initrd, and nothing to make one with") }
            do {
                try await makeInitrd(kernel)
            } catch {
                // Not a verdict on the kernel: the image's tools could not make its initrd.
                return skip("\(error)")
            }
        }
        if let initrd = kernel.initrd, !FileManager.default.isReadableFile(atPath: initrd) {
            return skip("\(initrd): the initrd cannot be read")
        }
        var spec = machine
        spec.name = MachineSpec.uniqueName(prefix: "d2l-verify-bisect")
        spec.directBoot = DirectKernelBoot(
            kernel: kernel.kernel, initrd: kernel.initrd,
            commandLine: DirectKernelBoot.commandLine(
                root: kernel.initrd == nil ? root.withoutInitrd : root.withInitrd, extra: append,
                architecture: machine.architecture))
        var kernelPlan = plan
        kernelPlan.bootDirectly(image)
        let transcriptPath = transcriptDirectory.map { directory in
            let safe = String(URL(fileURLWithPath: kernel.name).lastPathComponent.map { $0.isLetter || $0.isNumber || "._-+".contains($0) ? $0 : "_" })
            return URL(fileURLWithPath: directory)
                .appendingPathComponent(String(format: "%02d-%@-%d.log", index, safe, attempt)).path
        }
        let verifier = BootVerifier(hypervisor: hypervisor, options: VerifyOptions(plan: kernelPlan))
        do {
            let report = try await verifier.verify(
                spec,
                transcript: { recording in
                    if let transcriptPath { recording.write(to: transcriptPath) }
                }, progress: progress)
            let reached = report.stages.last { $0.reached }?.name
            return BootAttempt(
                verdict: report.passed ? .good : .bad, stageReached: reached,
                reason: report.passed ? nil : "stage \(report.failedStage ?? "?"): \(report.reason ?? "unknown")",
                seconds: report.seconds, transcript: transcriptPath)
        } catch {
            var outcome = skip("could not test: \(error)")
            outcome.transcript = transcriptPath
            return outcome
        }
    }
}
