//! File primitives shared by add, import, export and verify: reading a file
//! as data extents and holes (SEEK_DATA/SEEK_HOLE), writing one that keeps
//! zero blocks as holes, and the fsyncs that make renames durable.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::model::chunk::is_zero;
use crate::model::digest::BLOCK;
use crate::model::error::{Error, IoContext, Result};

/// Size of the buffer data is read and written in.
pub const CHUNK: usize = 1024 * 1024;

/// One piece of a file's logical content, in order.
#[derive(Debug, Clone, Copy)]
pub enum Piece<'a> {
    /// Bytes read from a data extent.
    Data(&'a [u8]),
    /// A run of zeros (a hole) of this length.
    Zeros(u64),
}

/// The data extents of `file` as `(offset, len)`, found with SEEK_DATA and
/// SEEK_HOLE without reading any data. A file system that does not report
/// holes yields one extent covering the whole file.
pub fn data_extents(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        // SAFETY: lseek on a descriptor we own; no memory is touched.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(extents),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) if pos == 0 => Ok(vec![(0, len)]),
                _ => Err(err),
            };
        }
        let data = data as u64;
        if data >= len {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = (hole as u64).min(len);
        extents.push((data, end - data));
        pos = end;
    }
    Ok(extents)
}

/// Stream the logical content of `file` (`len` bytes) to `f` as data and
/// holes, reading each data byte exactly once.
pub fn read_logical(
    file: &File,
    len: u64,
    path: &Path,
    mut f: impl FnMut(Piece<'_>) -> Result<()>,
) -> Result<()> {
    let extents = data_extents(file, len).at("seek", path)?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    for (start, extent_len) in extents {
        if start > pos {
            f(Piece::Zeros(start - pos))?;
        }
        let end = start + extent_len;
        pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(CHUNK);
            file.read_exact_at(&mut buf[..n], pos).at("read", path)?;
            f(Piece::Data(&buf[..n]))?;
            pos += n as u64;
        }
    }
    if len > pos {
        f(Piece::Zeros(len - pos))?;
    }
    Ok(())
}

/// The logical content of `[pos, end)` of `file` as data and holes, found
/// with SEEK_DATA / SEEK_HOLE (holes are not read). Everything past the
/// file's end counts as a hole, so a region a writer has passed without
/// writing (it extends the size only at the end) reads as zeros.
pub fn read_range(
    file: &File,
    path: &Path,
    mut pos: u64,
    end: u64,
    buf: &mut [u8],
    f: &mut dyn FnMut(Piece<'_>) -> Result<()>,
) -> Result<()> {
    while pos < end {
        let (data, hole) = match seek(file, pos, libc::SEEK_DATA) {
            Ok(data) if data >= end => (end, end),
            Ok(data) => (data, seek(file, data, libc::SEEK_HOLE).at("seek", path)?),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => (end, end),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                (pos, end)
            }
            Err(e) => return Err(Error::io("seek", path, e)),
        };
        if data > pos {
            f(Piece::Zeros(data - pos))?;
            pos = data;
        }
        let hole = hole.min(end);
        while pos < hole {
            let n = ((hole - pos) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], pos).at("read", path)?;
            f(Piece::Data(&buf[..n]))?;
            pos += n as u64;
        }
    }
    Ok(())
}

fn seek(file: &File, pos: u64, whence: libc::c_int) -> io::Result<u64> {
    // SAFETY: lseek on a descriptor we own; no memory is touched.
    let at = unsafe { libc::lseek(file.as_raw_fd(), pos as libc::off_t, whence) };
    if at < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(at as u64)
    }
}

/// Writes a file from its logical content, leaving every 4 KiB block that is
/// all zeros (by absolute offset) as a hole.
pub struct SparseWriter {
    file: File,
    pos: u64,
}

impl SparseWriter {
    /// Write into `file`, which must be empty.
    pub fn new(file: File) -> Self {
        SparseWriter { file, pos: 0 }
    }

    /// Logical bytes written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Append data, skipping whole zero blocks.
    pub fn data(&mut self, data: &[u8]) -> io::Result<()> {
        write_at_sparse(&self.file, data, self.pos)?;
        self.pos += data.len() as u64;
        Ok(())
    }

    /// Append a run of zeros as a hole.
    pub fn zeros(&mut self, len: u64) {
        self.pos += len;
    }

    /// Append a piece.
    pub fn piece(&mut self, piece: Piece<'_>) -> io::Result<()> {
        match piece {
            Piece::Data(d) => self.data(d),
            Piece::Zeros(n) => {
                self.zeros(n);
                Ok(())
            }
        }
    }

    /// Fix the apparent size and hand back the file (not yet fsynced).
    pub fn finish(self) -> io::Result<File> {
        self.file.set_len(self.pos)?;
        Ok(self.file)
    }
}

/// Write `data` at `offset` of `file` except the 4 KiB blocks (by absolute
/// offset) it covers whole that are all zeros: where `file` has holes, they
/// stay holes.
pub fn write_at_sparse(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut i = 0;
    while i < data.len() {
        let pos = offset + i as u64;
        let block_end = ((pos / BLOCK as u64 + 1) * BLOCK as u64 - pos) as usize;
        let n = block_end.min(data.len() - i);
        if n == BLOCK && is_zero(&data[i..i + n]) {
            i += n;
            continue;
        }
        // Gather the longest run of blocks that are not skipped, write it in one call.
        let mut j = i + n;
        while j < data.len() {
            let m = BLOCK.min(data.len() - j);
            if m == BLOCK && is_zero(&data[j..j + m]) {
                break;
            }
            j += m;
        }
        file.write_all_at(&data[i..j], offset + i as u64)?;
        i = j;
    }
    Ok(())
}

/// Ask the kernel to start writing `file`'s dirty pages back without waiting
/// for them, so a later fsync finds little left to do. Best effort: a file
/// system that does not support it is simply not hinted.
pub fn start_writeback(file: &File) {
    // SAFETY: sync_file_range on a descriptor we own; no memory is touched.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// When `meta`'s file last changed, in Unix seconds, robust to clock
/// skew: the modification time when it is not in the future, else the
/// status-change time (set by this machine's clock, which no writer can
/// forge), never later than `now`.
pub fn changed_at(meta: &std::fs::Metadata, now: i64) -> i64 {
    use std::os::unix::fs::MetadataExt;
    let changed = if meta.mtime() <= now {
        meta.mtime()
    } else {
        meta.ctime()
    };
    changed.min(now)
}

/// Flush the whole file system holding `path` (syncfs(2)): every file
/// written and every directory entry created on it so far is durable when
/// this returns, in one flush however many files there are.
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = open_dir(path).at("open", path)?;
    // SAFETY: syncfs on a descriptor we own; no memory is touched.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(Error::io("syncfs", path, io::Error::last_os_error()));
    }
    Ok(())
}

/// fsync a directory, making the renames and creations inside it durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    open_dir(dir).and_then(|d| d.sync_all()).at("fsync", dir)
}

/// Open a directory to sync it: a FIFO or other non-directory there fails
/// at once (O_DIRECTORY, O_NONBLOCK) rather than blocking.
fn open_dir(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK)
        .open(path)
}

/// Remove a directory tree; absent is fine.
pub fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", dir, e)),
        _ => Ok(()),
    }
}

/// Open `path` for reading only if it is a regular file, without following
/// a symbolic link and without blocking: a FIFO, device, socket or symlink
/// put where a registry or snapshot file belongs is an integrity error
/// naming it, found by `fstat` on the opened descriptor (O_NONBLOCK makes
/// opening a FIFO return at once instead of waiting for a writer). A file
/// that is absent stays an I/O error of kind `NotFound`.
pub fn open_regular(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::integrity(
                path.display().to_string(),
                "is a symbolic link, not a regular file",
            ));
        }
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let kind = file.metadata().at("stat", path)?.file_type();
    match not_regular(kind) {
        None => Ok(file),
        Some(what) => Err(Error::integrity(
            path.display().to_string(),
            format!("is {what}, not a regular file"),
        )),
    }
}

/// What a file type is when it is not a regular file.
fn not_regular(kind: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    Some(if kind.is_file() {
        return None;
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        "not a file"
    })
}

/// Open the lock file at `path` (ours or microsandbox's) to flock it,
/// creating it when `create`: without blocking (a FIFO there would
/// otherwise wait for a writer forever) and without following a symbolic
/// link. `Ok(None)` when it is absent and not to be created; anything but
/// a regular file there is an integrity error naming it.
pub fn open_lock(path: &Path, create: bool) -> Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match File::options()
        .read(true)
        .write(create)
        .create(create)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::integrity(
                path.display().to_string(),
                "is a symbolic link, not a regular file",
            ));
        }
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let kind = file.metadata().at("stat", path)?.file_type();
    match not_regular(kind) {
        None => Ok(Some(file)),
        Some(what) => Err(Error::integrity(
            path.display().to_string(),
            format!("is {what}, not a regular file"),
        )),
    }
}

/// Read a whole small file, refusing one larger than `limit` before buffering it.
pub fn read_limited(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    let file = open_regular(path)?;
    let len = file.metadata().at("stat", path)?.len();
    if len > limit {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut out)
        .at("read", path)?;
    if out.len() as u64 > limit {
        return Ok(None);
    }
    Ok(Some(out))
}

/// Bytes actually allocated on disk for `path`.
pub fn allocated_bytes(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks() * 512
}

/// Bytes allocated on disk for the regular files under `dir`, walked
/// without following links; entries that vanish or cannot be read count 0.
pub fn tree_allocated_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_allocated_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| allocated_bytes(&m)),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_future_mtime_falls_back_to_the_change_time() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let now = crate::db::now_unix();
        let day = std::time::Duration::from_secs(86400);
        file.set_modified(std::time::SystemTime::now() - 2 * day)
            .unwrap();
        let past = file.metadata().unwrap();
        assert_eq!(changed_at(&past, now), past.mtime());
        file.set_modified(std::time::SystemTime::now() + 400 * day)
            .unwrap();
        let future = file.metadata().unwrap();
        assert!(future.mtime() > now);
        assert_eq!(changed_at(&future, now), future.ctime().min(now));
        assert!(changed_at(&future, now) <= now);
    }

    #[test]
    fn sparse_writer_makes_holes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut w = SparseWriter::new(File::create(&path).unwrap());
        let mut data = vec![0u8; 64 * BLOCK];
        data[3] = 1;
        data[40 * BLOCK + 17] = 2;
        w.data(&data[..10]).unwrap();
        w.data(&data[10..]).unwrap();
        w.zeros(1 << 30);
        w.data(b"tail").unwrap();
        let file = w.finish().unwrap();
        let len = (64 * BLOCK) as u64 + (1 << 30) + 4;
        assert_eq!(file.metadata().unwrap().len(), len);
        assert!(allocated_bytes(&file.metadata().unwrap()) < 1 << 20);

        let mut logical = Vec::new();
        let mut zeros = 0u64;
        read_logical(&File::open(&path).unwrap(), len, &path, |p| {
            match p {
                Piece::Data(d) => logical.extend_from_slice(d),
                Piece::Zeros(n) => {
                    zeros += n;
                    logical.extend(std::iter::repeat_n(0, (n as usize).min(1 << 20)));
                }
            }
            Ok(())
        })
        .unwrap();
        assert!(zeros >= 1 << 30, "holes were not reported: {zeros}");
        assert_eq!(logical[3], 1);
        assert_eq!(logical[40 * BLOCK + 17], 2);
    }
}
