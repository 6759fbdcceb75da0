//! Writing one file into staging while hashing it: the sparse writer, the
//! extents digest every file gets, and the upper's integrity hash, all fed
//! from the same pass so no byte is read twice. The integrity hash, the
//! serial part that covers every logical byte, runs on a thread of its own
//! when more than one is allowed ([`crate::store::pipeline`]): for a staged
//! file it follows the file as it is written and hashes what was written,
//! read back from the staged file itself, so it hashes exactly what will be
//! promoted and the writer never waits for it.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::model::chunk::{ChunkList, ChunkSink};
use crate::model::digest::{Digest, ExtentsSha256, LogicalSink, PlainSha256, SparseSha256V1};
use crate::model::error::{Error, IoContext, Result};
use crate::model::manifest::{INTEGRITY_SHA256, INTEGRITY_SPARSE_SHA256_V1, Integrity};
use crate::process::progress::Progress;
use crate::store::files::{Piece, SparseWriter, read_logical, start_writeback};
use crate::store::pipeline::{Followed, Offloaded, Pending};

/// A running integrity hash of an upper file.
pub enum IntegrityHasher {
    /// `sha256`.
    Sha256(PlainSha256),
    /// `msb-sparse-sha256-v1`.
    SparseV1(SparseSha256V1),
}

impl IntegrityHasher {
    /// The hasher for a recorded integrity; the algorithm must already be validated.
    pub fn for_integrity(integrity: &Integrity, len: u64) -> Self {
        match integrity.algorithm.as_str() {
            INTEGRITY_SHA256 => IntegrityHasher::Sha256(PlainSha256::default()),
            INTEGRITY_SPARSE_SHA256_V1 => IntegrityHasher::SparseV1(SparseSha256V1::new(len)),
            other => unreachable!("integrity algorithm {other} passed validation"),
        }
    }

    /// The digest.
    pub fn finish(self) -> Digest {
        match self {
            IntegrityHasher::Sha256(h) => h.finish(),
            IntegrityHasher::SparseV1(h) => h.finish(),
        }
    }
}

impl LogicalSink for IntegrityHasher {
    fn data(&mut self, data: &[u8]) {
        match self {
            IntegrityHasher::Sha256(h) => h.data(data),
            IntegrityHasher::SparseV1(h) => h.data(data),
        }
    }
    fn zeros(&mut self, len: u64) {
        match self {
            IntegrityHasher::Sha256(h) => h.zeros(len),
            IntegrityHasher::SparseV1(h) => h.zeros(len),
        }
    }
}

/// The most bytes of a hole hashed between two progress reports (whole blocks).
pub const PROGRESS_STEP: u64 = 8 << 20;

/// The extents digest of a file already in place and, for an upper, its
/// integrity digest, in one streaming pass that does not read holes.
pub fn digest_file(
    file: &File,
    len: u64,
    path: &Path,
    integrity: Option<&Integrity>,
    progress: &dyn Progress,
) -> Result<(Digest, Option<Digest>)> {
    digest_file_into(file, len, path, integrity, &mut None::<ChunkSink>, progress)
}

/// [`digest_file`] that also cuts the file into its chunk list at
/// `chunk_size`, in the same pass.
pub fn digest_file_chunked(
    file: &File,
    len: u64,
    path: &Path,
    integrity: Option<&Integrity>,
    chunk_size: u64,
    progress: &dyn Progress,
) -> Result<(Digest, Option<Digest>, ChunkList)> {
    let mut chunks = ChunkSink::with_size(chunk_size);
    let (digest, integrity) = digest_file_into(file, len, path, integrity, &mut chunks, progress)?;
    Ok((digest, integrity, chunks.finish()))
}

fn digest_file_into(
    file: &File,
    len: u64,
    path: &Path,
    integrity: Option<&Integrity>,
    extra: &mut impl LogicalSink,
    progress: &dyn Progress,
) -> Result<(Digest, Option<Digest>)> {
    let mut extents = ExtentsSha256::new(len);
    let mut integrity =
        integrity.map(|i| Offloaded::new(IntegrityHasher::for_integrity(i, len), len));
    read_logical(file, len, path, |piece| {
        match piece {
            Piece::Data(d) => {
                extents.data(d);
                integrity.data(d);
                extra.data(d);
                progress.advance(d.len() as u64);
            }
            // A hole costs hashing time too (the integrity covers every
            // logical byte): report it as it is hashed, so a bar moves
            // steadily through a 1 GiB hole instead of jumping at its end.
            Piece::Zeros(mut n) => {
                while n > 0 {
                    let step = n.min(PROGRESS_STEP);
                    extents.zeros(step);
                    integrity.zeros(step);
                    extra.zeros(step);
                    progress.advance(step);
                    n -= step;
                }
            }
        }
        Ok(())
    })?;
    let integrity = integrity.map(Offloaded::finish).transpose()?;
    Ok((extents.finish().0, integrity.map(IntegrityHasher::finish)))
}

/// What staging one file found.
#[derive(Debug, Clone)]
pub struct StagedBytes {
    /// Logical bytes written.
    pub size: u64,
    /// msb-extents-sha256-v1.
    pub digest: Digest,
    /// The integrity digest, when one was requested.
    pub integrity: Option<Digest>,
    /// The chunk list, when one was requested ([`StagingFile::chunked`]).
    pub chunks: Option<ChunkList>,
}

/// Staged files of at least this many bytes are handed to writeback at once.
const WRITEBACK_FROM: u64 = 1 << 20;

/// A file being written into staging.
pub struct StagingFile {
    path: PathBuf,
    writer: SparseWriter,
    extents: ExtentsSha256,
    integrity: Option<Followed<IntegrityHasher>>,
    chunks: Option<ChunkSink>,
}

/// An upper's integrity hash still running after its file was staged.
pub type PendingIntegrity = Pending<IntegrityHasher>;

impl StagingFile {
    /// Create `path` (which must not exist) for a file of `len` logical
    /// bytes, hashing its integrity too when `integrity` is given.
    pub fn create(path: &Path, len: u64, integrity: Option<&Integrity>) -> Result<Self> {
        // Readable too: the integrity hash may read it back as it is written.
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .at("create", path)?;
        let integrity = integrity
            .map(|i| Followed::new(IntegrityHasher::for_integrity(i, len), &file, path, len))
            .transpose()?;
        Ok(StagingFile {
            path: path.to_path_buf(),
            writer: SparseWriter::new(file),
            extents: ExtentsSha256::new(len),
            integrity,
            chunks: None,
        })
    }

    /// Also cut the file into its chunk list (snapshot files are; cache files are not).
    pub fn chunked(mut self) -> Self {
        self.chunks = Some(ChunkSink::new());
        self
    }

    /// Write and hash the next piece.
    pub fn piece(&mut self, piece: Piece<'_>) -> Result<()> {
        match piece {
            Piece::Data(d) => {
                self.extents.data(d);
                self.chunks.data(d);
            }
            Piece::Zeros(n) => {
                self.extents.zeros(n);
                self.chunks.zeros(n);
            }
        }
        self.writer.piece(piece).at("write", &self.path)?;
        if let Some(integrity) = &mut self.integrity {
            integrity.written(piece, self.writer.position())?;
        }
        Ok(())
    }

    /// Fix the size, start writing the file back, and return the digests.
    ///
    /// No fsync here: promotion makes every staged file durable with one
    /// `syncfs` before the journal names it ([`crate::promote::promote`]),
    /// so an import's flushes do not grow with its number of files.
    pub fn finish(self) -> Result<StagedBytes> {
        let (mut bytes, pending) = self.finish_deferred()?;
        if let Some(pending) = pending {
            bytes.integrity = Some(pending.wait()?.finish());
        }
        Ok(bytes)
    }

    /// [`StagingFile::finish`] without waiting for the integrity hash: the
    /// bytes come back without it, and the hash still running beside.
    pub fn finish_deferred(self) -> Result<(StagedBytes, Option<PendingIntegrity>)> {
        let size = self.writer.position();
        let pending = self.integrity.map(|i| i.close(size));
        let file = self.writer.finish().at("write", &self.path)?;
        // Large files start writing back now so the syncfs finds little
        // left; small ones are left for it to write in one batch.
        if size >= WRITEBACK_FROM {
            start_writeback(&file);
        }
        let (digest, _) = self.extents.finish();
        let bytes = StagedBytes {
            size,
            digest,
            integrity: None,
            chunks: self.chunks.map(ChunkSink::finish),
        };
        Ok((bytes, pending))
    }
}

/// Compare a staged upper's integrity digest with the manifest's.
pub fn check_integrity(subject: &str, integrity: &Integrity, found: Option<Digest>) -> Result<()> {
    let (algorithm, expected) =
        integrity
            .expected()
            .map_err(|source| Error::UncheckableIntegrity {
                subject: subject.to_string(),
                source,
            })?;
    match found {
        Some(found) if found == expected => Ok(()),
        Some(found) => Err(Error::integrity(
            subject,
            format!("{algorithm} integrity is {found}, manifest records {expected}"),
        )),
        None => Err(Error::integrity(subject, "integrity was not computed")),
    }
}
