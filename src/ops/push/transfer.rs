//! Transfer: pack and compress the chunks a repository lacks and store
//! them, and store single blobs, each recorded as it lands.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::stream::{self, StreamExt};

use super::Dest;
use super::report::{CHUNK_ZSTD_LEVEL, Counts, PACK_CHUNKS, Stored};
use super::resolve::ChunkSource;
use crate::db::{self, remote::PackedChunk};
use crate::model::digest::Digest;
use crate::model::error::{Error, IoContext, Result};
use crate::ops::registry::Registry;
use crate::process::budget::{ByteBudget, PUSH_IN_FLIGHT_BYTES};
use crate::process::progress::Progress;
use crate::remote::format::{Descriptor, PACK};

/// A chunk's zstd frame in a pack.
struct Frame {
    chunk: Digest,
    offset: u64,
    length: u64,
    /// The chunk it was compressed against, if it is a delta.
    base: Option<Digest>,
}

/// A chunk the repository lacks: where to read it, and the base (a plain
/// chunk the repository holds) to send it as a delta against, if any.
#[derive(Clone)]
pub(super) struct Unplaced {
    pub(super) chunk: Digest,
    pub(super) source: ChunkSource,
    pub(super) base: Option<(Digest, ChunkSource)>,
}

impl Registry {
    /// Pack the chunks of each snapshot of `unplaced` (in order,
    /// [`PACK_CHUNKS`] a pack, never two snapshots' chunks in one pack),
    /// compress them on the blocking pool, and store each pack the
    /// repository lacks, each snapshot's config (`along`, one a snapshot)
    /// just before its packs:
    /// one stream for the whole chain, `jobs` transfers at a time and
    /// [`PUSH_IN_FLIGHT_BYTES`] of packs in memory at most; each stored pack
    /// is recorded (blob and chunk places) in its own transaction as it
    /// lands. Returns what was stored.
    pub(super) async fn store_packs(
        &self,
        dest: &Dest<'_>,
        unplaced: Vec<Vec<Unplaced>>,
        along: Vec<(Descriptor, Bytes)>,
        progress: &dyn Progress,
    ) -> Result<Counts> {
        let (registry, repo) = (
            dest.target.registry.as_str(),
            dest.target.repository.as_str(),
        );
        let conn = self.db().conn();
        let budget = ByteBudget::new(PUSH_IN_FLIGHT_BYTES);
        let budget = &budget;
        let blob = |(desc, body): (Descriptor, Bytes)| {
            async move {
                let stored = store_one(conn, dest, &desc, Body::Memory(body), !dest.fresh).await?;
                Ok::<_, Error>((desc, stored, Vec::new(), 0))
            }
            .boxed_local()
        };
        let pack = |batch: Vec<Unplaced>| {
            async move {
                let logical: u64 = batch.iter().map(|u| u.source.2).sum();
                let mut taken = budget.take(pack_bound(&batch)).await;
                let (body, desc, frames) = tokio::task::spawn_blocking(move || build_pack(&batch))
                    .await
                    .map_err(|e| Error::io("compress", "a pack", std::io::Error::other(e)))??;
                taken.shrink_to(body.len() as u64);
                let stored = store_one(conn, dest, &desc, Body::Memory(body), !dest.fresh).await?;
                drop(taken);
                Ok::<_, Error>((desc, stored, frames, logical))
            }
            .boxed_local()
        };
        // Each snapshot's config just before its packs, as when snapshots
        // went one at a time: small blobs at the head of the stream are
        // the ones a stopped push has sent in full without recording.
        let jobs = along
            .into_iter()
            .zip(unplaced)
            .flat_map(|(config, chunks)| {
                let packs: Vec<_> = chunks.chunks(PACK_CHUNKS).map(<[_]>::to_vec).collect();
                std::iter::once(blob(config)).chain(packs.into_iter().map(pack))
            });
        let mut results = stream::iter(jobs).buffer_unordered(dest.jobs);
        let mut counts = Counts::default();
        while let Some(done) = results.next().await {
            let (desc, stored, frames, logical) = done?;
            counts.add(&stored, desc.size);
            counts.chunks_uploaded += frames.len() as u64;
            let tx = rusqlite::Transaction::new_unchecked(
                conn,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            db::remote::record_remote(&tx, registry, repo, &desc.digest, desc.size)?;
            for f in &frames {
                let at = PackedChunk {
                    pack: desc.digest,
                    offset: f.offset,
                    length: f.length,
                    base: f.base,
                };
                db::remote::record_remote_chunk(&tx, registry, repo, &f.chunk, &at)?;
            }
            tx.commit()?;
            progress.advance(logical);
            crate::process::failpoint::hit(crate::process::failpoint::PUSH_BLOB_STORED)?;
        }
        Ok(counts)
    }

    /// Store one blob this push made (a config, a chunk map) unless the
    /// repository holds it; asked by HEAD only of a repository not fresh.
    pub(super) async fn store_blob(
        &self,
        dest: &Dest<'_>,
        desc: &Descriptor,
        body: Bytes,
    ) -> Result<Stored> {
        let (registry, repo) = (
            dest.target.registry.as_str(),
            dest.target.repository.as_str(),
        );
        let conn = self.db().conn();
        let stored = store_one(conn, dest, desc, Body::Memory(body), !dest.fresh).await?;
        db::remote::record_remote(conn, registry, repo, &desc.digest, desc.size)?;
        crate::process::failpoint::hit(crate::process::failpoint::PUSH_BLOB_STORED)?;
        Ok(stored)
    }
}
/// What a blob's body comes from.
pub(super) enum Body<'a> {
    Memory(Bytes),
    File(&'a std::path::Path),
}

/// Store one blob unless the repository holds it (recorded, or, when
/// `ask`, found by a HEAD); mounted from another repository of the
/// registry when one is known to hold it; else uploaded, a file streamed
/// from disk.
pub(super) async fn store_one(
    conn: &rusqlite::Connection,
    dest: &Dest<'_>,
    desc: &Descriptor,
    body: Body<'_>,
    ask: bool,
) -> Result<Stored> {
    let (client, registry) = (dest.client, dest.target.registry.as_str());
    let repo = dest.target.repository.as_str();
    if db::remote::remote_has(conn, registry, repo, &desc.digest)?
        || (ask && client.head_blob(repo, &desc.digest).await?.is_some())
    {
        return Ok(Stored::Present);
    }
    if let Some(from) = db::remote::remote_holder(conn, registry, repo, &desc.digest)?
        && client.mount_blob(repo, &desc.digest, &from).await?
    {
        return Ok(Stored::Mounted);
    }
    match body {
        Body::Memory(bytes) => client.put_blob(repo, &desc.digest, bytes).await?,
        Body::File(path) => {
            client
                .put_blob_file(repo, &desc.digest, path, desc.size)
                .await?
        }
    }
    Ok(Stored::Uploaded)
}

/// Read, check and compress each chunk of a batch into one pack: zstd
/// frames one after another. A chunk with a base is compressed with the
/// base's bytes as its prefix when that makes it smaller. Returns the
/// pack, its descriptor (its digest taken here, off the async thread) and
/// each chunk's frame.
fn build_pack(batch: &[Unplaced]) -> Result<(Bytes, Descriptor, Vec<Frame>)> {
    let (bases, base_of) = gather_bases(batch);
    let mut pack = Vec::with_capacity(frames_bound(batch) as usize);
    let mut frames = Vec::with_capacity(batch.len());
    let mut compressor =
        zstd::bulk::Compressor::new(CHUNK_ZSTD_LEVEL).map_err(|e| Error::io("start", "zstd", e))?;
    // One context for every delta of the pack, each against its base.
    let mut deltas = zstd::zstd_safe::CCtx::create();
    deltas
        .set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(
            CHUNK_ZSTD_LEVEL,
        ))
        .map_err(|e| Error::io("start", "zstd", zstd_error(e)))?;
    let mut chunks = ChunkReader::default();
    for (u, base) in batch.iter().zip(base_of) {
        let bytes = chunks.read(&u.chunk, &u.source)?;
        let offset = pack.len();
        let compress_error = |e| Error::io("compress", u.source.0.as_path(), e);
        let delta = match base {
            Some((b, range)) => Some((
                b,
                delta_frame(&mut deltas, bytes, &bases[range]).map_err(compress_error)?,
            )),
            None => None,
        };
        let mut base = None;
        match delta {
            // Small enough that no plain frame could be worth a second
            // compression of the chunk to compare.
            Some((b, delta)) if delta.len() <= bytes.len() / SURE_DELTA => {
                pack.extend_from_slice(&delta);
                base = Some(b);
            }
            delta => {
                // The plain frame goes straight into the pack (room for the
                // worst case is reserved), replaced by the delta when that
                // is smaller.
                let mut end = std::io::Cursor::new(&mut pack);
                end.set_position(offset as u64);
                compressor
                    .compress_to_buffer(bytes, &mut end)
                    .map_err(compress_error)?;
                if let Some((b, delta)) = delta
                    && delta.len() < pack.len() - offset
                {
                    pack.truncate(offset);
                    pack.extend_from_slice(&delta);
                    base = Some(b);
                }
            }
        }
        frames.push(Frame {
            chunk: u.chunk,
            offset: offset as u64,
            length: (pack.len() - offset) as u64,
            base,
        });
    }
    let body = Bytes::from(pack);
    let desc = Descriptor::of(PACK, &body);
    Ok((body, desc, frames))
}

/// A delta of at most 1/`SURE_DELTA` of its chunk's length is taken without
/// also compressing the chunk plainly to compare: a child's chunk that
/// changed a few blocks of its parent's deltas to about those blocks.
const SURE_DELTA: usize = 16;

/// The most bytes building the pack of `batch` takes: its frames and its
/// bases.
fn pack_bound(batch: &[Unplaced]) -> u64 {
    let mut bases: Vec<(&Digest, u64)> = batch
        .iter()
        .filter_map(|u| u.base.as_ref().map(|(b, s)| (b, s.2)))
        .collect();
    bases.sort_unstable();
    bases.dedup();
    frames_bound(batch) + bases.iter().map(|(_, len)| len).sum::<u64>()
}

/// The most bytes the frames of `batch` may take: zstd's bound for
/// incompressible chunks.
fn frames_bound(batch: &[Unplaced]) -> u64 {
    let data: u64 = batch.iter().map(|u| u.source.2).sum();
    data + batch.len() as u64 * crate::remote::format::max_chunk_frame(0) + data / 128
}

/// The bases of the deltas of `batch`, each read and checked once, one
/// after another in one buffer (so that one zstd context serves the whole
/// pack), and where each chunk's base is in it. A base that cannot be read
/// is no base: its chunk goes plainly.
fn gather_bases(batch: &[Unplaced]) -> (Vec<u8>, Vec<Option<(Digest, Range)>>) {
    let mut buf = Vec::new();
    let mut seen: HashMap<Digest, Range> = HashMap::new();
    let mut reader = ChunkReader::default();
    let mut place = |u: &Unplaced| {
        let (b, source) = u.base.as_ref()?;
        if let Some(range) = seen.get(b) {
            return Some((*b, range.clone()));
        }
        let start = buf.len();
        buf.extend_from_slice(reader.read(b, source).ok()?);
        seen.insert(*b, start..buf.len());
        Some((*b, start..buf.len()))
    };
    let at = batch.iter().map(&mut place).collect();
    (buf, at)
}

/// A range of bytes in a buffer.
type Range = std::ops::Range<usize>;

/// zstd of `bytes` with `reference` as its prefix (`zstd --patch-from`),
/// in `cctx` (its level set; the prefix serves this frame only).
fn delta_frame<'a>(
    cctx: &mut zstd::zstd_safe::CCtx<'a>,
    bytes: &[u8],
    reference: &'a [u8],
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(bytes.len()));
    cctx.ref_prefix(reference).map_err(zstd_error)?;
    cctx.compress2(&mut out, bytes).map_err(zstd_error)?;
    Ok(out)
}

/// A zstd error code as an I/O error.
fn zstd_error(code: usize) -> std::io::Error {
    std::io::Error::other(zstd::zstd_safe::get_error_name(code))
}

/// Reads chunks, keeping the last file it read open.
#[derive(Default)]
struct ChunkReader {
    open: Option<(std::sync::Arc<std::path::PathBuf>, std::fs::File)>,
    buf: Vec<u8>,
}

impl ChunkReader {
    /// The bytes of `chunk` at its source, checked against its digest: a
    /// file changed behind our back must not reach the registry under the
    /// chunk's name. Valid until the next read.
    fn read(&mut self, chunk: &Digest, (path, offset, len): &ChunkSource) -> Result<&[u8]> {
        let file = match &self.open {
            Some((p, file)) if p == path => file,
            _ => {
                let file = crate::store::files::open_regular(path.as_path())?;
                &self.open.insert((path.clone(), file)).1
            }
        };
        // Only bytes beyond the buffer's last length are zeroed; all are read over.
        self.buf.resize(*len as usize, 0);
        file.read_exact_at(&mut self.buf, *offset)
            .at("read", path.as_path())?;
        let found = Digest::of(&self.buf);
        if found != *chunk {
            return Err(Error::integrity(
                path.display().to_string(),
                format!(
                    "the {len} bytes at offset {offset} hash to {found}, not the indexed chunk {chunk}; run `msb-registry verify --content`"
                ),
            ));
        }
        Ok(&self.buf)
    }
}
