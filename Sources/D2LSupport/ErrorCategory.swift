/// What an error means for the command that met it, and so for its exit status (see `ExitPolicy`
/// in D2LCommands): the user asked for something that cannot be done as asked, the tool could not
/// do its work (so it gives no verdict), or the work was done and the answer is no.
public enum ErrorCategory: String, Sendable, Codable {
    /// Bad options or input: the command line or a file it names must change.
    case usage
    /// The work could not be done (a tool, libvirt or the disk failed us): no verdict.
    case couldNotTest = "could-not-test"
    /// The work was done and failed: the disk did not boot, the build failed.
    case failed
}

/// An error that knows its category and, when it wraps one, the error that caused it.
public protocol CategorizedError: Error, CustomStringConvertible, Sendable {
    var category: ErrorCategory { get }
    /// The lower-level error this one explains, when there is one.
    var cause: (any Error)? { get }
}

extension CategorizedError {
    public var cause: (any Error)? { nil }
}

extension Error {
    /// This error's category; errors that do not say are `couldNotTest`.
    public var errorCategory: ErrorCategory { (self as? any CategorizedError)?.category ?? .couldNotTest }
}
