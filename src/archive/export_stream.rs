//! Writing planned files into a tar stream, verifying each one in the same
//! pass: every byte that goes into the archive also goes into an
//! msb-extents-sha256-v1 hasher, and the digest and length are compared with
//! what the index recorded when the file entered the registry.
//!
//! Files with holes become GNU sparse members holding only their data
//! extents, so the work is proportional to the data; in dense mode the holes
//! are written as zeros from memory, never read from disk. Either way the
//! extents digest costs nothing for a hole, which is why it (and not the
//! manifest's `sha256` / `msb-sparse-sha256-v1`, which hash every logical
//! zero) is what export checks. That is enough: the upper's manifest
//! integrity was verified against the same bytes when the snapshot entered
//! the registry, and the extents digest recorded then binds exactly those
//! bytes, so a file whose extents digest still matches still satisfies its
//! manifest integrity.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::entry::NAME_COMMENT;
use super::tar;
use crate::model::digest::{Digest, ExtentsSha256, LogicalSink, zero_buffer};
use crate::model::error::{Error, IoContext, Result};
use crate::process::progress::Progress;
use crate::store::files::{CHUNK, data_extents, open_regular};

/// One file to archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    /// Archive member name (`sha256-<16 hex>/<file>` or `cache/<kind>/<file>`).
    pub member: String,
    /// Where the file is in the registry.
    pub path: PathBuf,
    /// Apparent size the index recorded.
    pub size: u64,
    /// msb-extents-sha256-v1 digest the index recorded.
    pub digest: Digest,
    /// Member mtime: the snapshot's `created_at` (the head's for cache files).
    pub mtime: u64,
    /// On a manifest member: the snapshot's name, carried in a pax `comment`
    /// record before it unless the archive is dense.
    pub carried_name: Option<String>,
}

/// A planned file, opened and checked against its recorded size, with its
/// data extents found (SEEK_DATA/SEEK_HOLE).
#[derive(Debug)]
pub struct OpenedFile {
    planned: PlannedFile,
    file: File,
    extents: Vec<(u64, u64)>,
}

impl OpenedFile {
    /// Open `planned`; a missing file or one whose size differs from the
    /// index is an integrity error naming it.
    pub fn open(planned: &PlannedFile) -> Result<Self> {
        let path = &planned.path;
        let file = match open_regular(path) {
            Ok(f) => f,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::integrity(
                    path.display().to_string(),
                    "recorded in the index but missing from disk",
                ));
            }
            Err(e) => return Err(e),
        };
        let len = file.metadata().at("stat", path)?.len();
        if len != planned.size {
            return Err(Error::integrity(
                path.display().to_string(),
                format!("size is {len} bytes, index records {}", planned.size),
            ));
        }
        let extents = tar::gnu_extents(&data_extents(&file, len).at("seek", path)?, len);
        Ok(OpenedFile {
            planned: planned.clone(),
            file,
            extents,
        })
    }

    /// Whether the file has holes and is written as a sparse member unless dense.
    pub fn has_holes(&self) -> bool {
        self.extents.as_slice() != [(0, self.planned.size)] && self.planned.size > 0
    }

    /// Bytes of member content this file puts into the stream.
    pub fn content_bytes(&self, dense: bool) -> u64 {
        if dense || !self.has_holes() {
            self.planned.size
        } else {
            self.extents.iter().map(|e| e.1).sum()
        }
    }
}

/// The tar stream of an export, over any async writer.
pub struct MemberWriter<'a, W> {
    out: W,
    out_name: PathBuf,
    dense: bool,
    buf: Vec<u8>,
    progress: &'a dyn Progress,
}

impl<'a, W: AsyncWrite + Unpin> MemberWriter<'a, W> {
    /// Write members into `out` (named `out_name` in errors).
    pub fn new(out: W, out_name: &Path, dense: bool, progress: &'a dyn Progress) -> Self {
        MemberWriter {
            out,
            out_name: out_name.to_path_buf(),
            dense,
            buf: vec![0; CHUNK],
            progress,
        }
    }

    /// Write one member and verify what was written against the index.
    pub async fn member(&mut self, f: &OpenedFile) -> Result<()> {
        let p = &f.planned;
        let sparse = !self.dense && f.has_holes();
        if let Some(name) = p.carried_name.as_deref().filter(|_| !self.dense) {
            let pax = tar::pax(
                &p.member,
                "comment",
                &format!("{NAME_COMMENT}{name}"),
                p.mtime,
            )?;
            self.put(&pax).await?;
        }
        let headers = if sparse {
            tar::sparse(&p.member, &f.extents, p.size, p.mtime)?
        } else {
            tar::regular(&p.member, p.size, p.mtime)?.to_vec()
        };
        self.put(&headers).await?;

        let mut hasher = ExtentsSha256::new(p.size);
        let mut pos = 0u64;
        for &(start, len) in &f.extents {
            if start > pos && !sparse {
                self.zeros(start - pos).await?;
            }
            hasher.zeros(start - pos);
            let end = start + len;
            pos = start;
            while pos < end {
                let n = ((end - pos) as usize).min(self.buf.len());
                f.file
                    .read_exact_at(&mut self.buf[..n], pos)
                    .at("read", &p.path)?;
                hasher.data(&self.buf[..n]);
                self.out
                    .write_all(&self.buf[..n])
                    .await
                    .at("write", &self.out_name)?;
                self.progress.advance(n as u64);
                pos += n as u64;
            }
        }
        if p.size > pos {
            if !sparse {
                self.zeros(p.size - pos).await?;
            }
            hasher.zeros(p.size - pos);
        }
        let written = f.content_bytes(self.dense);
        self.put(&zero_buffer()[..tar::padding(written)]).await?;

        let (digest, fed) = hasher.finish();
        if fed != p.size || digest != p.digest {
            return Err(Error::integrity(
                p.path.display().to_string(),
                format!(
                    "content digest is {digest} over {fed} bytes, index records {} over {} bytes",
                    p.digest, p.size
                ),
            ));
        }
        Ok(())
    }

    /// Write a small member held in memory (a signature) as a regular entry.
    pub async fn small(&mut self, member: &str, bytes: &[u8], mtime: u64) -> Result<()> {
        let header = tar::regular(member, bytes.len() as u64, mtime)?;
        self.put(&header).await?;
        self.put(bytes).await?;
        self.put(&zero_buffer()[..tar::padding(bytes.len() as u64)])
            .await
    }

    /// End the archive and flush every layer below, returning the writer.
    pub async fn finish(mut self) -> Result<W> {
        self.put(&tar::END_OF_ARCHIVE).await?;
        self.out.shutdown().await.at("write", &self.out_name)?;
        Ok(self.out)
    }

    async fn zeros(&mut self, mut len: u64) -> Result<()> {
        let zeros = zero_buffer();
        while len > 0 {
            let n = len.min(zeros.len() as u64) as usize;
            self.put(&zeros[..n]).await?;
            self.progress.advance(n as u64);
            len -= n as u64;
        }
        Ok(())
    }

    async fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).await.at("write", &self.out_name)
    }
}
