import D2LVerify
import Foundation

/// What one boot says about a kernel, in `git bisect run`'s terms.
public enum KernelVerdict: String, Sendable, Codable {
    case good, bad
    /// Not a verdict on the kernel: libvirt failed, the file could not be read.
    case skip
}

/// One boot of one kernel.
public struct BootAttempt: Sendable, Codable, Equatable {
    public var verdict: KernelVerdict
    /// The last stage reached ("kernel", "init", ...), or nil when none was.
    public var stageReached: String?
    /// Why it did not boot, or why it could not be tested.
    public var reason: String?
    public var seconds: Double
    /// The raw console bytes, saved beside the state file.
    public var transcript: String?

    public init(
        verdict: KernelVerdict, stageReached: String? = nil, reason: String? = nil, seconds: Double = 0,
        transcript: String? = nil
    ) {
        self.verdict = verdict
        self.stageReached = stageReached
        self.reason = reason
        self.seconds = seconds
        self.transcript = transcript
    }
}

/// One bisection step: a kernel, its boots, and the verdict they add up to.
public struct BisectStep: Sendable, Codable, Equatable {
    public var index: Int
    public var name: String
    public var verdict: KernelVerdict
    public var attempts: [BootAttempt]
    /// The attempt that decided (the first good one, else the last).
    public var deciding: BootAttempt? { attempts.first { $0.verdict == .good } ?? attempts.last }
}

/// Everything needed to resume a bisection, written after every step.
public struct BisectState: Sendable, Codable, Equatable {
    public var format = 1
    public var image: String
    public var kernels: [BisectKernel]
    /// Indexes into `kernels` of the kernels given as good and bad.
    public var good: Int
    public var bad: Int
    public var retries: Int
    public var steps: [BisectStep] = []
    /// Boots of --good or --bad made after the search only to record their transcripts (and to check them).
    public var endSteps: [BisectStep]? = nil

    public init(image: String, kernels: [BisectKernel], good: Int, bad: Int, retries: Int) {
        self.image = image
        self.kernels = kernels
        self.good = good
        self.bad = bad
        self.retries = retries
    }

    /// The same bisection: a state file for another one must not be resumed by mistake.
    public func isSameBisection(as other: BisectState) -> Bool {
        image == other.image && kernels.map(\.kernel) == other.kernels.map(\.kernel)
            && kernels.map(\.initrd) == other.kernels.map(\.initrd) && good == other.good && bad == other.bad
    }

    /// The narrowest good..bad range the steps so far prove, and the kernels inside it that were skipped.
    public var range: (lastGood: Int, firstBad: Int, skipped: [Int]) {
        var low = good
        var high = bad
        for step in steps {
            switch step.verdict {
            case .good where step.index > low && step.index < high: low = step.index
            case .bad where step.index > low && step.index < high: high = step.index
            default: break
            }
        }
        let skipped = steps.filter { $0.verdict == .skip && $0.index > low && $0.index < high }.map(\.index)
        return (low, high, Array(Set(skipped)).sorted())
    }

    /// The kernel to boot next: the untested one nearest the middle of the range; nil when done.
    public var nextIndex: Int? {
        let (low, high, skipped) = range
        let tried = Set(steps.map(\.index)).union(skipped)
        let candidates = (low + 1..<max(low + 1, high)).filter { !tried.contains($0) }
        let middle = Double(low + high) / 2
        return candidates.min { abs(Double($0) - middle) < abs(Double($1) - middle) }
    }

    /// What the steps so far show; meaningful once `nextIndex` is nil.
    public var result: BisectResult {
        let (low, high, skipped) = range
        let step = { (index: Int) in
            (self.steps + (self.endSteps ?? [])).last { $0.index == index && $0.verdict != .skip }
        }
        var disagreements: [String] = []
        if let end = endSteps?.last(where: { $0.index == low }), end.verdict == .bad {
            disagreements.append("--good \(kernels[low].name) did not boot when booted to record its transcript")
        }
        if let end = endSteps?.last(where: { $0.index == high }), end.verdict == .good {
            disagreements.append("--bad \(kernels[high].name) booted when booted to record its transcript")
        }
        let endSkips = (endSteps ?? []).filter { $0.verdict == .skip && step($0.index) == nil }.map {
            "\($0.index == low ? "--good" : "--bad") \(kernels[$0.index].name) could not be booted for its transcript: "
                + ($0.deciding?.reason ?? "?")
        }
        return BisectResult(
            lastGood: kernels[low], firstBad: kernels[high],
            lastGoodTranscript: step(low)?.deciding?.transcript, firstBadTranscript: step(high)?.deciding?.transcript,
            firstBadStep: step(high), possiblyFirstBad: skipped.map { kernels[$0] } + [kernels[high]],
            boots: steps.reduce(0) { $0 + $1.attempts.count }, steps: steps.count,
            endBoots: (endSteps ?? []).reduce(0) { $0 + $1.attempts.count }, disagreements: disagreements,
            endSkips: Array(Set(endSkips)).sorted())
    }

    /// The ends of the final range that were given, not booted by the search: they have no transcript yet
    /// (an end boot that could not test the kernel does not count).
    public var unbootedEnds: [Int] {
        let (low, high, _) = range
        return [low, high].filter { index in
            !(steps + (endSteps ?? [])).contains { $0.index == index && $0.verdict != .skip }
        }
    }
}

/// The end of a bisection.
public struct BisectResult: Sendable {
    public var lastGood: BisectKernel
    public var firstBad: BisectKernel
    public var lastGoodTranscript: String?
    public var firstBadTranscript: String?
    /// How the first bad kernel failed, when it was booted (not just given with --bad).
    public var firstBadStep: BisectStep?
    /// More than one when kernels that could not be tested lie between the last good and the first bad.
    public var possiblyFirstBad: [BisectKernel]
    /// Boots of the search itself (at most ceil(log2(n-1)) steps, plus retries).
    public var boots: Int
    public var steps: Int
    /// Boots of --good/--bad after the search, to record their transcripts.
    public var endBoots: Int = 0
    /// A given end that booted against its label: the bisection's premise does not hold.
    public var disagreements: [String] = []
    /// Given ends whose boot for a transcript could not test them (not a verdict), with the reason.
    public var endSkips: [String] = []
    public var isExact: Bool { possiblyFirstBad.count == 1 && disagreements.isEmpty }
}

/// What the bisector tells its caller while it runs.
public enum BisectProgress: Sendable {
    case resumed(steps: Int)
    case booting(index: Int, kernel: BisectKernel, attempt: Int, remaining: Int)
    /// Booting a given end (--good or --bad) that the search did not need, to record its transcript.
    /// `end` is "--good" or "--bad".
    case recordingEnd(index: Int, kernel: BisectKernel, end: String)
    case booted(index: Int, kernel: BisectKernel, attempt: BootAttempt)
    case stepDone(BisectStep, lastGood: BisectKernel, firstBad: BisectKernel)
}

/// Binary search of an ordered kernel list for the first kernel that does not boot.
///
/// Pure logic around a verdict function: the real one boots each kernel through libvirt, the tests
/// give a fake. The state goes to `stateFile` after every step, so an interrupted run resumes.
public struct KernelBisector: Sendable {
    public typealias Judge = @Sendable (_ kernel: BisectKernel, _ index: Int, _ attempt: Int) async -> BootAttempt

    public let stateFile: String?
    public let judge: Judge
    /// After the search, boot --good and --bad when the search did not, so that both ends have a transcript.
    public let recordEnds: Bool

    public init(stateFile: String?, recordEnds: Bool = false, judge: @escaping Judge) {
        self.stateFile = stateFile
        self.recordEnds = recordEnds
        self.judge = judge
    }

    /// At most this many steps for `count` kernels with both ends known: ceil(log2(count - 1)).
    public static func maximumSteps(kernels count: Int) -> Int {
        var steps = 0
        while (1 << steps) < count - 1 { steps += 1 }
        return steps
    }

    /// A new state, or the one in `stateFile` when it is the same bisection. Throws for a state file of another one.
    public func start(_ fresh: BisectState, restart: Bool = false) throws -> BisectState {
        guard fresh.good < fresh.bad else {
            throw BisectError.kernels(
                "the good kernel (\(fresh.kernels[fresh.good].name)) must come before the bad one "
                    + "(\(fresh.kernels[fresh.bad].name)) in the kernel order")
        }
        guard let stateFile, !restart, FileManager.default.fileExists(atPath: stateFile) else { return fresh }
        let saved: BisectState
        do {
            saved = try JSONDecoder().decode(BisectState.self, from: Data(contentsOf: URL(fileURLWithPath: stateFile)))
        } catch {
            throw BisectError.state("\(stateFile): not a d2l bisect state file (\(error)); remove it or pass --restart")
        }
        guard saved.isSameBisection(as: fresh) else {
            throw BisectError.state(
                "\(stateFile) belongs to another bisection (other image, kernels, initrds or ends): "
                    + "pass another --state, or --restart to replace it")
        }
        var resumed = saved
        resumed.retries = fresh.retries
        return resumed
    }

    /// Boots kernels until the first bad one is known, saving the state after each step.
    public func run(
        _ initial: BisectState, progress: @escaping @Sendable (BisectProgress) -> Void = { _ in }
    ) async throws -> BisectResult {
        var state = initial
        if !state.steps.isEmpty { progress(.resumed(steps: state.steps.count)) }
        while let index = state.nextIndex {
            try Task.checkCancellation()
            let (low, high, _) = state.range
            let remaining = Self.maximumSteps(kernels: high - low + 1)
            let step = try await boot(state, index: index) { attempt in
                progress(.booting(index: index, kernel: state.kernels[index], attempt: attempt, remaining: remaining))
            } booted: { progress(.booted(index: index, kernel: state.kernels[index], attempt: $0)) }
            state.steps.append(step)
            try save(state)
            let range = state.range
            progress(.stepDone(step, lastGood: state.kernels[range.lastGood], firstBad: state.kernels[range.firstBad]))
        }
        // Each end once (no retries: a --bad that boots is already a contradiction), once per run.
        var triedEnds: Set<Int> = []
        while recordEnds, let index = state.unbootedEnds.first(where: { !triedEnds.contains($0) }) {
            try Task.checkCancellation()
            triedEnds.insert(index)
            progress(.recordingEnd(index: index, kernel: state.kernels[index], end: index == state.good ? "--good" : "--bad"))
            let step = try await boot(state, index: index, attempts: 1) { _ in } booted: {
                progress(.booted(index: index, kernel: state.kernels[index], attempt: $0))
            }
            state.endSteps = (state.endSteps ?? []) + [step]
            try save(state)
        }
        try save(state)
        return state.result
    }

    /// Boots one kernel, again after a failure up to the retries: one good boot calls it good, bad needs every
    /// attempt to fail.
    private func boot(
        _ state: BisectState, index: Int, attempts limit: Int? = nil, booting: (Int) -> Void,
        booted: (BootAttempt) -> Void
    ) async throws -> BisectStep {
        let kernel = state.kernels[index]
        var attempts: [BootAttempt] = []
        for attempt in 1...(limit ?? state.retries + 1) {
            booting(attempt)
            let outcome = await judge(kernel, index, attempt)
            // An interrupted boot says nothing about the kernel: it is not recorded.
            try Task.checkCancellation()
            attempts.append(outcome)
            booted(outcome)
            if outcome.verdict == .good { break }
        }
        let verdict: KernelVerdict =
            attempts.contains { $0.verdict == .good } ? .good
            : attempts.contains { $0.verdict == .bad } ? .bad : .skip
        return BisectStep(index: index, name: kernel.name, verdict: verdict, attempts: attempts)
    }

    func save(_ state: BisectState) throws {
        guard let stateFile else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        do {
            try encoder.encode(state).write(to: URL(fileURLWithPath: stateFile), options: .atomic)
        } catch {
            throw BisectError.state("\(stateFile): cannot write the bisect state: \(error.localizedDescription)")
        }
    }
}
