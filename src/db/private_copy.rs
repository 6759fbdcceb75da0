//! Reading an SQLite database in WAL mode that cannot be read in place
//! without writing beside it: on a read-only or full file system SQLite
//! cannot create (or grow) the `-shm` wal-index, and opening the file as
//! immutable would ignore what its `-wal` holds. When no process has the
//! database open, the file and its `-wal` are copied to a private
//! temporary directory and read there: every committed row is seen and
//! nothing is created beside the original.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A copy of a database and its `-wal`, removed on drop.
pub struct PrivateCopy {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl PrivateCopy {
    /// Copy `path` and its `-wal` (when present) into a new temporary directory.
    pub fn of(path: &Path) -> std::io::Result<PrivateCopy> {
        let dir = tempfile::Builder::new()
            .prefix("msb-registry-read-")
            .tempdir()?;
        let copy = dir.path().join("index.db");
        copy_regular(path, &copy)?;
        let wal = side_file(path, "-wal");
        if wal.symlink_metadata().is_ok() {
            copy_regular(&wal, &side_file(&copy, "-wal"))?;
        }
        Ok(PrivateCopy {
            _dir: dir,
            path: copy,
        })
    }

    /// The copied database.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Copy `from`, which must be a regular file (opened without blocking or
/// following a symlink at its last component: a FIFO is refused, not waited on).
fn copy_regular(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut src = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(from)?;
    let kind = src.metadata()?.file_type();
    if !kind.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file{}",
            from.display(),
            if kind.is_fifo() { " (a FIFO)" } else { "" }
        )));
    }
    let mut dst = File::create(to)?;
    std::io::copy(&mut src, &mut dst)?;
    Ok(())
}

/// `<path><suffix>`: SQLite's `-wal` and `-shm` files.
pub fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    name.into()
}

/// Whether `path`'s `-wal` exists and holds something.
pub fn has_wal(path: &Path) -> bool {
    std::fs::symlink_metadata(side_file(path, "-wal")).is_ok_and(|m| m.len() > 0)
}

/// Whether some process has the WAL-mode database at `path` open: every
/// connection holds a shared lock on the "DMS" byte of the `-shm` file
/// (byte 128 in SQLite's unix VFS), and one in exclusive locking mode (no
/// `-shm`) holds locks on the database file itself. A file that cannot be
/// opened or tested counts as live.
pub fn connection_live(path: &Path) -> bool {
    // SQLite's lock bytes: PENDING at 1 GiB, then RESERVED and 510 SHARED bytes.
    const PENDING: i64 = 0x4000_0000;
    lock_held(path, PENDING, 512) || lock_held(&side_file(path, "-shm"), 128, 1)
}

/// Whether another process holds an fcntl lock on `len` bytes of `path`
/// from `start`. An absent file holds none.
fn lock_held(path: &Path, start: i64, len: i64) -> bool {
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return e.kind() != std::io::ErrorKind::NotFound,
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return true;
    }
    // SAFETY: a zeroed flock is a valid argument once its fields are set;
    // F_GETLK only fills it in.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = start;
    lock.l_len = len;
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the call; `lock` outlives it.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    rc != 0 || lock.l_type != libc::F_UNLCK as libc::c_short
}
