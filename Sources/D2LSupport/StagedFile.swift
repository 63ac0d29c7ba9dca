import Foundation

/// Why a staged file could not be made or named.
public struct StagedFileError: Error, CustomStringConvertible, Sendable, CategorizedError {
    /// The path involved: the directory, the temporary name or the destination.
    public var path: String
    /// The system's reason (strerror).
    public var message: String
    /// The errno of the call that failed.
    public var code: Int32

    public var description: String { "\(path): \(message)" }
    public var category: ErrorCategory { .failed }
}

/// A file written without a name in its destination's directory and named only when complete, so that
/// no way of ending d2l, SIGKILL and a full disk included, leaves a partial file beside the output.
///
/// It is opened with O_TMPFILE: the file system frees it when the last descriptor closes, other
/// programs (mkfs, mtools, syslinux, qemu-img) open it as `/proc/<pid>/fd/<n>` while this process
/// lives, and `commit` links it to its name with linkat(2). Where the directory's file system has no
/// O_TMPFILE (NFS before 4.2, most FUSE file systems) or /proc is not mounted, it is an ordinary file
/// with a hidden name beside the destination (`.NAME.d2l-PID.SUFFIX`), registered with `Cleanup`:
/// removed on every exit d2l sees and, after SIGKILL, by `Cleanup`'s reaper process.
public final class StagedFile {
    /// The directory the file lives in and is named in.
    public let directory: String
    /// A path any program of this user can open the file by until `commit` or `discard`.
    public let path: String
    /// true when the file has no name (O_TMPFILE); false for the named fallback.
    public let isAnonymous: Bool
    private let temporaryName: String
    private var descriptor: Int32

    /// Whether new staged files may be anonymous: false when D2L_NO_TMPFILE is set (to any value but
    /// 0), which makes d2l behave as on a file system without O_TMPFILE.
    public static var anonymousAllowed: Bool {
        let value = ProcessInfo.processInfo.environment["D2L_NO_TMPFILE"] ?? ""
        return value.isEmpty || value == "0"
    }

    /// Opens a new, empty file in `directory`, without a name where the file system allows it.
    ///
    /// - Parameters:
    ///   - fallbackName: the hidden name used beside the destination where O_TMPFILE is not
    ///     supported, and for the instant of replacing an existing destination.
    ///   - anonymous: false for the named file even where O_TMPFILE works.
    /// - Throws: `StagedFileError` when the directory refuses a new file (permissions, read-only, full).
    public init(directory: String, fallbackName: String, anonymous: Bool = StagedFile.anonymousAllowed) throws {
        self.directory = directory
        temporaryName = directory + "/" + fallbackName
        // O_TMPFILE is __O_TMPFILE | O_DIRECTORY; __O_TMPFILE is 020000000 on every Linux architecture
        // d2l builds for (Glibc's macro does not import into Swift).
        let fd = anonymous ? open(directory, 0o20000000 | O_DIRECTORY | O_RDWR | O_CLOEXEC, 0o644) : -1
        let error = anonymous ? errno : EOPNOTSUPP
        if fd >= 0, access("/proc/self/fd/\(fd)", F_OK) == 0 {
            descriptor = fd
            isAnonymous = true
            path = "/proc/\(getpid())/fd/\(fd)"
            return
        }
        if fd >= 0 {
            close(fd)  // no /proc: other programs could not reach it
        } else if ![EOPNOTSUPP, EISDIR, EINVAL].contains(error) {
            // Old kernels take O_TMPFILE as O_DIRECTORY (EISDIR); file systems without it say EOPNOTSUPP.
            throw StagedFileError(path: directory, message: String(cString: strerror(error)), code: error)
        }
        let named = open(temporaryName, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard named >= 0 else {
            let error = errno
            throw StagedFileError(path: temporaryName, message: String(cString: strerror(error)), code: error)
        }
        Cleanup.shared.add(temporaryName)
        descriptor = named
        isAnonymous = false
        path = temporaryName
    }

    deinit { discard() }

    /// Sets the file's size (a sparse file: no blocks are allocated).
    public func truncate(to size: UInt64) throws {
        guard ftruncate(descriptor, off_t(size)) == 0 else { throw failure(path) }
    }

    /// Flushes the file's data to the device.
    public func sync() throws {
        guard fsync(descriptor) == 0 else { throw failure(path) }
    }

    /// Gives the file its name: linkat(2) for an anonymous file, rename(2) for the named fallback.
    ///
    /// An existing `destination` is replaced only when `replace` is true; then an anonymous file is
    /// linked to its hidden temporary name and renamed over it, so the old file stays whole until the
    /// new one takes its place.
    /// - Throws: `StagedFileError`, with EEXIST when `destination` exists and `replace` is false.
    public func commit(to destination: String, replace: Bool) throws {
        guard descriptor >= 0 else { throw StagedFileError(path: destination, message: "already named or discarded", code: EBADF) }
        if isAnonymous {
            let source = "/proc/self/fd/\(descriptor)"
            if linkat(AT_FDCWD, source, AT_FDCWD, destination, AT_SYMLINK_FOLLOW) != 0 {
                guard errno == EEXIST, replace else { throw failure(destination) }
                // linkat never replaces: a hidden name for an instant (known to the reaper, should
                // SIGKILL come then), then rename over the old file.
                unlink(temporaryName)
                Cleanup.shared.add(temporaryName)
                defer { Cleanup.shared.remove(temporaryName) }
                guard linkat(AT_FDCWD, source, AT_FDCWD, temporaryName, AT_SYMLINK_FOLLOW) == 0 else {
                    throw failure(temporaryName)
                }
                guard rename(temporaryName, destination) == 0 else {
                    let error = failure(destination)
                    unlink(temporaryName)
                    throw error
                }
            }
        } else {
            if replace {
                guard rename(temporaryName, destination) == 0 else { throw failure(destination) }
            } else if link(temporaryName, destination) == 0 {
                // link(2) refuses an existing destination where rename(2) would replace it.
                unlink(temporaryName)
            } else {
                guard errno != EEXIST else { throw failure(destination) }
                // A file system without hard links (FAT, some FUSE): check, then rename.
                guard access(destination, F_OK) != 0 else {
                    throw StagedFileError(path: destination, message: String(cString: strerror(EEXIST)), code: EEXIST)
                }
                guard rename(temporaryName, destination) == 0 else { throw failure(destination) }
            }
            Cleanup.shared.remove(temporaryName)
        }
        close(descriptor)
        descriptor = -1
    }

    /// Closes the file and, for the named fallback, removes it: nothing of it is left.
    public func discard() {
        guard descriptor >= 0 else { return }
        close(descriptor)
        descriptor = -1
        if !isAnonymous {
            unlink(temporaryName)
            Cleanup.shared.remove(temporaryName)
        }
    }

    private func failure(_ path: String) -> StagedFileError {
        let error = errno
        return StagedFileError(path: path, message: String(cString: strerror(error)), code: error)
    }
}
