//! Follow: hash each pulled file in offset order on threads of its own
//! while it is being assembled (docs/oci.md, "What a pull checks"). One
//! thread computes the upper's integrity over every logical byte: the
//! check that binds the file to the snapshot digest, and the one serial
//! hash a pull cannot avoid. Another computes the extents digest the index
//! records and checks that no data lies outside the map's chunks. A region
//! is hashed as soon as every chunk the map places up to its end has
//! landed, so hashing runs beside the copies and downloads instead of
//! after them, and no byte of the file is read by the same hash twice.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::model::chunk::{ChunkList, ChunkSink, is_zero};
use crate::model::digest::{Digest, ExtentsSha256, LogicalSink};
use crate::model::error::{Error, IoContext, Result};
use crate::model::manifest::Integrity;
use crate::remote::format::malformed;
use crate::store::files::{Piece, read_range, write_at_sparse};
use crate::store::stage::{IntegrityHasher, PROGRESS_STEP};

/// Bytes each hashing thread reads at a time.
const READ_BUF: usize = 256 << 10;

/// Which chunks of a file (by the map's extents, in offset order) are written.
pub(super) struct Landing {
    spans: Vec<(u64, u64)>,
    state: Mutex<Landed>,
    changed: Condvar,
}

struct Landed {
    done: Vec<bool>,
    cancelled: bool,
}

impl Landing {
    /// Nothing landed yet of a file with chunks at `spans` (offset, length).
    fn new(spans: Vec<(u64, u64)>) -> Landing {
        Landing {
            state: Mutex::new(Landed {
                done: vec![false; spans.len()],
                cancelled: false,
            }),
            spans,
            changed: Condvar::new(),
        }
    }

    /// The chunk at `offset` is written.
    pub(super) fn land(&self, offset: u64) {
        if let Ok(k) = self.spans.binary_search_by_key(&offset, |s| s.0) {
            self.state.lock().expect("landing lock").done[k] = true;
            self.changed.notify_all();
        }
    }

    /// The offset of the first chunk not written, if any.
    fn unlanded(&self) -> Option<u64> {
        let s = self.state.lock().expect("landing lock");
        s.done.iter().position(|d| !d).map(|k| self.spans[k].0)
    }

    /// Stop every thread waiting for a chunk.
    fn cancel(&self) {
        self.state.lock().expect("landing lock").cancelled = true;
        self.changed.notify_all();
    }

    /// Wait for chunk `k`; returns the first chunk from `k` on that has
    /// not landed (or the count), `None` once cancelled.
    fn ready_from(&self, k: usize) -> Option<usize> {
        let mut s = self.state.lock().expect("landing lock");
        loop {
            if s.cancelled {
                return None;
            }
            if s.done[k] {
                return Some(
                    (k..s.done.len())
                        .find(|&j| !s.done[j])
                        .unwrap_or(s.done.len()),
                );
            }
            s = self.changed.wait(s).expect("landing lock");
        }
    }
}

/// A file being assembled: written only through [`Staged::write`], so
/// its followers learn what landed.
pub(super) struct Staged {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) landing: Arc<Landing>,
    /// Whether an earlier run of the pull wrote it (chunks may be there).
    pub(super) resumed: bool,
}

impl Staged {
    /// `file` at `path`, whose map places chunks at `spans` (offset, length).
    pub(super) fn new(file: File, path: PathBuf, spans: Vec<(u64, u64)>, resumed: bool) -> Staged {
        Staged {
            file,
            path,
            landing: Arc::new(Landing::new(spans)),
            resumed,
        }
    }

    /// Write the chunk at `offset` (zero blocks stay holes).
    pub(super) fn write(&self, bytes: &[u8], offset: u64) -> Result<()> {
        write_at_sparse(&self.file, bytes, offset).at("write", &self.path)?;
        self.landing.land(offset);
        Ok(())
    }
}

/// What the followers of a file found.
pub(super) struct Followed {
    /// msb-extents-sha256-v1 of the file.
    pub(super) digest: Digest,
    /// Its integrity digest, when one was asked for.
    pub(super) integrity: Option<Digest>,
    /// Its chunk list cut at the registry's chunk size, when the map was
    /// cut at another.
    pub(super) recut: Option<ChunkList>,
}

type Joined<T> = Option<JoinHandle<Result<Option<T>>>>;

/// The hashing threads of one file.
pub(super) struct Follower {
    landing: Arc<Landing>,
    hashed: Arc<AtomicU64>,
    integrity: Joined<Digest>,
    extents: Joined<(Digest, Option<ChunkList>)>,
    outcome: Option<Result<Followed>>,
}

/// What a follower is told about its file.
pub(super) struct FollowSpec {
    /// The file's logical size.
    pub(super) size: u64,
    /// The integrity to compute (the upper's), when recorded.
    pub(super) integrity: Option<Integrity>,
    /// Cut the file into chunks at the registry's size (the map used another).
    pub(super) recut: bool,
    /// The chunk size the map was cut at (for naming offsets in refusals).
    pub(super) chunk_size: u64,
    /// What a refusal names: the chunk map.
    pub(super) subject: String,
}

impl Follower {
    /// Start hashing `staged` as its chunks land.
    pub(super) fn start(staged: &Staged, spec: FollowSpec) -> Result<Follower> {
        let hashed = Arc::new(AtomicU64::new(0));
        let open = || staged.file.try_clone().at("open", &staged.path);
        let integrity = match spec.integrity.clone().filter(|i| i.expected().is_ok()) {
            Some(integrity) => {
                let (file, path, landing, hashed) = (
                    open()?,
                    staged.path.clone(),
                    staged.landing.clone(),
                    hashed.clone(),
                );
                let size = spec.size;
                Some(spawn("pull-integrity", move || {
                    hash_integrity(&landing, &file, &path, size, &integrity, &hashed)
                })?)
            }
            None => None,
        };
        let counts = integrity.is_none().then(|| hashed.clone());
        let (file, path, landing) = (open()?, staged.path.clone(), staged.landing.clone());
        let extents = Some(spawn("pull-extents", move || {
            hash_extents(&landing, &file, &path, &spec, counts.as_deref())
        })?);
        Ok(Follower {
            landing: staged.landing.clone(),
            hashed,
            integrity,
            extents,
            outcome: None,
        })
    }

    /// Logical bytes hashed so far.
    pub(super) fn hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// Whether its threads are done.
    pub(super) fn is_done(&self) -> bool {
        self.outcome.is_some()
            || [
                self.integrity.as_ref().map(JoinHandle::is_finished),
                self.extents.as_ref().map(JoinHandle::is_finished),
            ]
            .into_iter()
            .all(|f| f.unwrap_or(true))
    }

    /// The offset of the first chunk of its file not written, if any:
    /// once assembly is over there is none, or waiting would never end.
    pub(super) fn unlanded(&self) -> Option<u64> {
        self.landing.unlanded()
    }

    /// Wait for its threads (every chunk has landed, or the file is
    /// abandoned).
    pub(super) fn join(&mut self) {
        if self.outcome.is_some() {
            return;
        }
        let integrity = joined(self.integrity.take());
        let extents = joined(self.extents.take());
        self.outcome = Some(match (integrity, extents) {
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(integrity), Ok(Some((digest, recut)))) => Ok(Followed {
                digest,
                integrity,
                recut,
            }),
            (_, Ok(None)) => Err(Error::io(
                "hash",
                "a pulled file",
                std::io::Error::other("abandoned before every chunk landed"),
            )),
        });
    }

    /// What it found: waits for it first.
    pub(super) fn outcome(&mut self) -> Result<Followed> {
        self.join();
        self.outcome.take().expect("joined")
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.landing.cancel();
        self.join();
    }
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<Option<T>> + Send + 'static,
) -> Result<JoinHandle<Result<Option<T>>>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::io("start", "a hashing thread", e))
}

fn joined<T>(handle: Joined<T>) -> Result<Option<T>> {
    match handle {
        None => Ok(None),
        Some(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
    }
}

/// The integrity digest of every logical byte, counting them in `hashed`;
/// `None` when abandoned.
fn hash_integrity(
    landing: &Landing,
    file: &File,
    path: &Path,
    size: u64,
    integrity: &Integrity,
    hashed: &AtomicU64,
) -> Result<Option<Digest>> {
    crate::process::timeline::mark("integrity: start");
    let mut h = IntegrityHasher::for_integrity(integrity, size);
    let done = walk(landing, file, path, size, &mut |piece, _| {
        feed(&mut h, piece, Some(hashed));
        Ok(())
    })?;
    crate::process::timeline::mark("integrity: done");
    Ok(done.then(|| h.finish()))
}

/// The extents digest (and with `recut`, the chunk list at the registry's
/// size), refusing data outside the map's chunks; counts logical bytes in
/// `hashed` when given.
fn hash_extents(
    landing: &Landing,
    file: &File,
    path: &Path,
    spec: &FollowSpec,
    hashed: Option<&AtomicU64>,
) -> Result<Option<(Digest, Option<ChunkList>)>> {
    let mut extents = ExtentsSha256::new(spec.size);
    let mut chunks = spec.recut.then(ChunkSink::new);
    let mut at = 0u64;
    let done = walk(landing, file, path, spec.size, &mut |piece, inside| {
        if let (Piece::Data(d), false) = (piece, inside)
            && !is_zero(d)
        {
            let first = d.iter().position(|&b| b != 0).unwrap_or(0) as u64;
            let offset = (at + first) / spec.chunk_size * spec.chunk_size;
            return Err(malformed(
                &spec.subject,
                format!(
                    "file {} assembled from it differs from it: the file holds data at offset {offset}, where the map lists none",
                    crate::model::text::escape(
                        &path.file_name().unwrap_or_default().to_string_lossy()
                    )
                ),
            ));
        }
        at += match piece {
            Piece::Data(d) => d.len() as u64,
            Piece::Zeros(n) => n,
        };
        feed(&mut extents, piece, hashed);
        if let Some(c) = &mut chunks {
            feed(c, piece, None);
        }
        Ok(())
    })?;
    if !done {
        return Ok(None);
    }
    let (digest, fed) = extents.finish();
    debug_assert_eq!(fed, spec.size);
    Ok(Some((digest, chunks.map(ChunkSink::finish))))
}

/// Feed one piece to `sink`, a run of zeros in steps so `hashed` moves
/// steadily through a large hole.
fn feed(sink: &mut impl LogicalSink, piece: Piece<'_>, hashed: Option<&AtomicU64>) {
    match piece {
        Piece::Data(d) => {
            sink.data(d);
            if let Some(h) = hashed {
                h.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        Piece::Zeros(mut n) => {
            while n > 0 {
                let step = n.min(PROGRESS_STEP);
                sink.zeros(step);
                if let Some(h) = hashed {
                    h.fetch_add(step, Ordering::Relaxed);
                }
                n -= step;
            }
        }
    }
}

/// Hand `sink` the file's logical content in order, each region once the
/// chunks up to its end have landed; `inside` says whether a piece lies in
/// one of the map's chunks. `false` when abandoned.
fn walk(
    landing: &Landing,
    file: &File,
    path: &Path,
    size: u64,
    sink: &mut dyn FnMut(Piece<'_>, bool) -> Result<()>,
) -> Result<bool> {
    let mut buf = vec![0u8; READ_BUF];
    let mut pos = 0u64;
    let mut k = 0;
    let mut waited = std::time::Duration::ZERO;
    while k < landing.spans.len() {
        let t = std::time::Instant::now();
        let Some(upto) = landing.ready_from(k) else {
            return Ok(false);
        };
        waited += t.elapsed();
        for &(offset, len) in &landing.spans[k..upto] {
            read_range(file, path, pos, offset, &mut buf, &mut |p| sink(p, false))?;
            read_range(file, path, offset, offset + len, &mut buf, &mut |p| {
                sink(p, true)
            })?;
            pos = offset + len;
        }
        k = upto;
    }
    read_range(file, path, pos, size, &mut buf, &mut |p| sink(p, false))?;
    crate::process::timeline::mark(&format!(
        "walk: waited {:.1} ms for chunks",
        waited.as_secs_f64() * 1000.0
    ));
    Ok(true)
}
