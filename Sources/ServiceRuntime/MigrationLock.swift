import Foundation

/// An exclusive lock between processes on one host, held while a database is opened and
/// migrated: `flock(2)` on a file of its own, which the kernel releases if the process dies.
struct MigrationLock {
    private let fd: Int32

    /// Blocks until the lock on `path` (created if missing) is held.
    init(path: String) throws {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ConfigError("cannot open the migration lock \(path): \(String(cString: strerror(errno)))") }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else {
                let message = String(cString: strerror(errno))
                close(fd)
                throw ConfigError("cannot lock \(path): \(message)")
            }
        }
    }

    func release() {
        _ = flock(fd, LOCK_UN)
        close(fd)
    }
}
