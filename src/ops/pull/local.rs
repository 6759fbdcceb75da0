//! Chunks already on this machine: in this pull's staged files (written
//! by it, or by an interrupted run of it) or in any snapshot here.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::db;
use crate::model::digest::Digest;
use crate::model::error::{IoContext, Result};
use crate::ops::registry::Registry;
use crate::store::layout::SnapshotName;

/// Where a chunk's bytes are: file, offset, length.
pub(super) type Place = (PathBuf, u64, u64);

/// Where chunks already checked by this pull are (written by it, read
/// back from an interrupted run of it, or read from a snapshot and hashed).
pub(super) type Written = HashMap<Digest, Place>;

/// A file in staging for the bases of deltas that no file uses: each
/// decoded base is written there (and found there by [`Written`]) rather
/// than held in memory, whatever number of them a chunk map names.
pub(super) struct Scratch {
    file: File,
    path: PathBuf,
    end: std::cell::Cell<u64>,
}

impl Scratch {
    /// A new, empty scratch file at `path`.
    pub(super) fn create(path: PathBuf) -> Result<Scratch> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .at("create", &path)?;
        Ok(Scratch {
            file,
            path,
            end: std::cell::Cell::new(0),
        })
    }

    /// Append `bytes`; returns where they are.
    pub(super) fn keep(&self, bytes: &[u8]) -> Result<(PathBuf, u64, u64)> {
        let at = self.end.get();
        self.file.write_all_at(bytes, at).at("write", &self.path)?;
        self.end.set(at + bytes.len() as u64);
        Ok((self.path.clone(), at, bytes.len() as u64))
    }

    /// Where the file is.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Delete the file.
    pub(super) fn remove(self) -> Result<()> {
        drop(self.file);
        std::fs::remove_file(&self.path).at("remove", &self.path)
    }
}

impl Registry {
    /// The bytes of `chunk` (`len` bytes, when known) and where they are,
    /// from this pull's files or any snapshot here. A place in `written`
    /// was checked already and is not hashed again; bytes from a snapshot
    /// are checked against the digest (a changed file is not trusted: the
    /// chunk is downloaded instead).
    pub(super) fn local_chunk(
        &self,
        written: &Written,
        chunk: &Digest,
        len: Option<u64>,
    ) -> Result<Option<(Vec<u8>, Place)>> {
        if let Some(place @ (path, offset, length)) = written.get(chunk)
            && len.is_none_or(|l| l == *length)
            && let Some(buf) = read_place(path, *offset, *length)
        {
            return Ok(Some((buf, place.clone())));
        }
        let conn = self.db().conn();
        if let Some(place) = db::remote::chunk_place(conn, chunk)?
            && let Ok(name) = place.name.parse::<SnapshotName>()
            && let Some(length) = db::chunks::chunk_length(conn, chunk)?
            && len.is_none_or(|l| l == length)
            && let path = self.layout().snapshot_file(&name, &place.path)
            && let Some(buf) = read_place(&path, place.offset, length)
            && Digest::of(&buf) == *chunk
        {
            return Ok(Some((buf, (path, place.offset, length))));
        }
        Ok(None)
    }
}

impl Registry {
    /// Where `chunk` (`len` bytes) may be read here, best first, each with
    /// whether it was checked already: this pull's place for it, then the
    /// place the index records in a snapshot (to be hashed before use).
    pub(super) fn chunk_sources(
        &self,
        written: &Written,
        chunk: &Digest,
        len: u64,
    ) -> Result<Vec<(Place, bool)>> {
        let mut sources = Vec::new();
        if let Some(place) = written.get(chunk).filter(|p| p.2 == len) {
            sources.push((place.clone(), true));
        }
        let conn = self.db().conn();
        if let Some(place) = db::remote::chunk_place(conn, chunk)?
            && let Ok(name) = place.name.parse::<SnapshotName>()
            && db::chunks::chunk_length(conn, chunk)? == Some(len)
        {
            let path = self.layout().snapshot_file(&name, &place.path);
            sources.push(((path, place.offset, len), false));
        }
        Ok(sources)
    }

    /// The bytes of `base`, to decode a delta against: from this pull's
    /// files (checked already: `true`), else from any snapshot here,
    /// unchecked (`false`). A delta decoded against wrong bytes fails its
    /// own chunk's check, and that check is what protects the file: the
    /// base is checked only when that happens, never made a place this
    /// pull trusts by it.
    pub(super) fn base_bytes(
        &self,
        written: &Written,
        base: &Digest,
    ) -> Result<Option<(Vec<u8>, bool)>> {
        if let Some((path, offset, length)) = written.get(base)
            && let Some(buf) = read_place(path, *offset, *length)
        {
            return Ok(Some((buf, true)));
        }
        let conn = self.db().conn();
        if let Some(place) = db::remote::chunk_place(conn, base)?
            && let Ok(name) = place.name.parse::<SnapshotName>()
            && let Some(length) = db::chunks::chunk_length(conn, base)?
            && let Some(buf) = read_place(
                &self.layout().snapshot_file(&name, &place.path),
                place.offset,
                length,
            )
        {
            return Ok(Some((buf, false)));
        }
        Ok(None)
    }

    /// Whether `chunk` (`len` bytes) is probably on this machine: placed by
    /// this pull, or recorded for a snapshot here. Only the index is asked;
    /// [`Registry::local_chunk`] reads and checks the bytes when they are used.
    pub(super) fn local_candidate(
        &self,
        written: &Written,
        chunk: &Digest,
        len: Option<u64>,
    ) -> Result<bool> {
        if written
            .get(chunk)
            .is_some_and(|(_, _, length)| len.is_none_or(|l| l == *length))
        {
            return Ok(true);
        }
        let conn = self.db().conn();
        Ok(db::remote::chunk_place(conn, chunk)?.is_some()
            && db::chunks::chunk_length(conn, chunk)?
                .is_some_and(|length| len.is_none_or(|l| l == length)))
    }
}

/// The bytes of `chunk` from the first of `sources` that holds them
/// (hashed unless checked already: a changed file is not trusted).
pub(super) fn read_source(sources: &[(Place, bool)], chunk: &Digest) -> Option<Vec<u8>> {
    sources
        .iter()
        .find_map(|((path, offset, length), checked)| {
            read_place(path, *offset, *length).filter(|buf| *checked || Digest::of(buf) == *chunk)
        })
}

/// `length` bytes at `offset` of the regular file at `path`, if it has them.
fn read_place(path: &Path, offset: u64, length: u64) -> Option<Vec<u8>> {
    let file = crate::store::files::open_regular(path).ok()?;
    let mut buf = vec![0u8; length as usize];
    file.read_exact_at(&mut buf, offset).ok()?;
    Some(buf)
}
/// Open (or create) a staged file of `size` bytes; `true` when it is new
/// (nothing in it to resume from).
pub(super) fn open_staged(path: &Path, size: u64) -> Result<(File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .at("open", path)?;
    let meta = file.metadata().at("stat", path)?;
    if !meta.is_file() {
        return Err(crate::model::error::Error::integrity(
            path.display().to_string(),
            "is not a regular file",
        ));
    }
    let len = meta.len();
    if len == size {
        return Ok((file, false));
    }
    file.set_len(0).at("truncate", path)?;
    file.set_len(size).at("truncate", path)?;
    Ok((file, true))
}

/// Punch holes over the ranges of `file` outside `spans` (offset, length,
/// in order): a resumed file then holds nothing its map does not place.
/// Where holes cannot be punched the file starts over empty (`false`:
/// nothing kept).
pub(super) fn clear_unlisted(
    file: &File,
    path: &Path,
    size: u64,
    spans: &[(u64, u64)],
) -> Result<bool> {
    use std::os::fd::AsRawFd;
    let mut pos = 0u64;
    let gaps = spans
        .iter()
        .map(|&(offset, len)| {
            let gap = (pos, offset);
            pos = offset + len;
            gap
        })
        .collect::<Vec<_>>();
    for (start, end) in gaps.into_iter().chain(std::iter::once((pos, size))) {
        if end <= start {
            continue;
        }
        // SAFETY: fallocate on a descriptor we own; no memory is touched.
        let punched = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                (end - start) as libc::off_t,
            )
        };
        if punched != 0 {
            file.set_len(0).at("truncate", path)?;
            file.set_len(size).at("truncate", path)?;
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether `file` already holds `chunk` at `offset`.
pub(super) fn holds(file: &File, offset: u64, len: u64, chunk: &Digest) -> Result<bool> {
    let mut buf = vec![0u8; len as usize];
    Ok(file.read_exact_at(&mut buf, offset).is_ok() && Digest::of(&buf) == *chunk)
}
