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

/// Where a chunk's bytes already are: file, offset, length.
pub(super) type Written = HashMap<Digest, (PathBuf, u64, u64)>;

impl Registry {
    /// The bytes of `chunk` (`len` bytes, when known) from this pull's
    /// files or any snapshot here, checked against its digest (a changed
    /// file is not trusted).
    pub(super) fn local_chunk(
        &self,
        written: &Written,
        chunk: &Digest,
        len: Option<u64>,
    ) -> Result<Option<Vec<u8>>> {
        let conn = self.db().conn();
        let mut places = Vec::new();
        if let Some((path, offset, length)) = written.get(chunk) {
            places.push((path.clone(), *offset, *length));
        }
        if let Some(place) = db::remote::chunk_place(conn, chunk)?
            && let Ok(name) = place.name.parse::<SnapshotName>()
            && let Some(length) = db::chunks::chunk_length(conn, chunk)?
        {
            places.push((
                self.layout().snapshot_file(&name, &place.path),
                place.offset,
                length,
            ));
        }
        for (path, offset, length) in places {
            if len.is_some_and(|l| l != length) {
                continue;
            }
            let Ok(file) = crate::store::files::open_regular(&path) else {
                continue;
            };
            let mut buf = vec![0u8; length as usize];
            if file.read_exact_at(&mut buf, offset).is_ok() && Digest::of(&buf) == *chunk {
                return Ok(Some(buf));
            }
        }
        Ok(None)
    }
}
/// Open (or create) a staged file of `size` bytes; `true` when it is new
/// (nothing in it to resume from).
pub(super) fn open_staged(path: &Path, size: u64) -> Result<(File, bool)> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at("open", path)?;
    let len = file.metadata().at("stat", path)?.len();
    if len == size {
        return Ok((file, false));
    }
    file.set_len(0).at("truncate", path)?;
    file.set_len(size).at("truncate", path)?;
    Ok((file, true))
}

/// Whether `file` already holds `chunk` at `offset`.
pub(super) fn holds(file: &File, offset: u64, len: u64, chunk: &Digest) -> Result<bool> {
    let mut buf = vec![0u8; len as usize];
    Ok(file.read_exact_at(&mut buf, offset).is_ok() && Digest::of(&buf) == *chunk)
}
