//! Transfer: the frames a pull lacks, coalesced into range requests and
//! fetched `jobs` at a time, each decoded (a delta against its base),
//! checked and written where it goes.

use futures_util::stream::{self, StreamExt};

use super::follow::{Staged, Target};
use super::local::{Place, Scratch, Written, read_first};
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::ops::registry::Registry;
use crate::process::budget::{ByteBudget, MAX_IN_FLIGHT_BYTES};
use crate::remote::Client;
use crate::remote::format::{ChunkMap, malformed};

/// A chunk to download: its frame in a pack, and the file offsets it goes to.
pub(super) struct Wanted {
    pub(super) chunk: Digest,
    pub(super) pack: usize,
    /// Offset and length of its zstd frame in the pack.
    pub(super) frame: (u64, u64),
    /// Its uncompressed length (at most, for a base no file holds).
    pub(super) len: u64,
    /// The chunk its frame is a delta against, if any.
    pub(super) base: Option<Digest>,
    /// (file index, offset) it is written at.
    pub(super) targets: Vec<(usize, u64)>,
}

/// What every download phase of one snapshot works with: where its packs
/// are, the files they are written to, and where chunks already are.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    pub(super) client: &'a Client,
    pub(super) repo: &'a str,
    pub(super) map: &'a ChunkMap,
    pub(super) pack_sizes: &'a [u64],
    pub(super) files: &'a [Staged],
    /// Where each chunk already on this machine is (bases included).
    pub(super) written: &'a std::cell::RefCell<Written>,
    /// Where decoded bases no file uses go.
    pub(super) scratch: &'a Scratch,
    /// Range requests at once.
    pub(super) jobs: usize,
}

/// Frames of one pack fetched with one range request.
pub(super) struct Range {
    pub(super) pack: usize,
    pub(super) chunks: Vec<Wanted>,
}

impl Range {
    /// First byte and length of the range.
    pub(super) fn span(&self) -> (u64, u64) {
        let start = self.chunks[0].frame.0;
        let last = &self.chunks[self.chunks.len() - 1];
        (start, last.frame.0 + last.frame.1 - start)
    }
}

/// The most bytes one range request asks for.
const MAX_RANGE: u64 = 4 << 20;
/// The most bytes the first range asks for; each next one may ask for
/// twice as many, up to [`MAX_RANGE`]. A range is decoded once it has all
/// arrived, so the first chunks land (and the hashing that follows them
/// starts) after a small request, not a full one.
const FIRST_RANGE: u64 = 256 << 10;
/// Bytes of frames not needed that a range may span rather than split.
const MAX_GAP: u64 = 64 << 10;

/// Group the wanted frames into range requests: by pack, in pack order,
/// a new range where the gap to the last frame is large or the range full.
fn coalesce(mut wanted: Vec<Wanted>) -> Vec<Range> {
    wanted.sort_by_key(|w| (w.pack, w.frame.0));
    let mut ranges: Vec<Range> = Vec::new();
    for w in wanted {
        let most = (FIRST_RANGE << ranges.len().saturating_sub(1).min(8)).min(MAX_RANGE);
        if let Some(r) = ranges.last_mut()
            && r.pack == w.pack
        {
            let (start, len) = r.span();
            let end = start + len;
            if w.frame.0 >= end
                && w.frame.0 - end <= MAX_GAP
                && w.frame.0 + w.frame.1 - start <= most
            {
                r.chunks.push(w);
                continue;
            }
        }
        ranges.push(Range {
            pack: w.pack,
            chunks: vec![w],
        });
    }
    ranges
}

impl Registry {
    /// Download the frames `wanted` needs, coalesced into range requests,
    /// `jobs` at a time and [`MAX_IN_FLIGHT_BYTES`] of ranges in memory at
    /// most; decode each (a delta against its base, found on
    /// this machine) and write it where it goes, calling `landed` as each
    /// range is done. Decoded chunks with no place to go (bases no file
    /// uses) are written to `scratch`, never held in memory. A delta whose
    /// base is not found here, or does not decode against an unchecked one,
    /// is put in `defer` when given (left out of its range, for a later
    /// phase to check or fetch its base), else refused.
    pub(super) async fn download(
        &self,
        source: &Source<'_>,
        wanted: Vec<Wanted>,
        defer: Option<&std::cell::RefCell<Vec<Wanted>>>,
        landed: &mut dyn FnMut(&Range, u64) -> Result<()>,
    ) -> Result<()> {
        let limits = Limits {
            budget: ByteBudget::new(MAX_IN_FLIGHT_BYTES),
            decoding: tokio::sync::Semaphore::new(DECODES_IN_FLIGHT),
        };
        let mut results = stream::iter(coalesce(wanted))
            .map(|range| self.fetch_range(source, range, &limits, defer))
            .buffer_unordered(source.jobs);
        while let Some(done) = results.next().await {
            let (range, received) = done?;
            landed(&range, received)?;
        }
        Ok(())
    }

    /// Fetch one range and decode its frames, [`DECODES_IN_FLIGHT`] at a
    /// time on blocking threads, in order; returns the range with the
    /// chunks decoded (those deferred left out) and the bytes received.
    async fn fetch_range(
        &self,
        source: &Source<'_>,
        mut range: Range,
        limits: &Limits,
        defer: Option<&std::cell::RefCell<Vec<Wanted>>>,
    ) -> Result<(Range, u64)> {
        let pack = source.map.packs[range.pack];
        let (start, len) = range.span();
        let _taken = limits.budget.take(len).await;
        let body = source
            .client
            .get_range(
                source.repo,
                &pack,
                source.pack_sizes[range.pack],
                start,
                len,
            )
            .await?;
        let mut decoding = stream::iter(std::mem::take(&mut range.chunks))
            .map(|w| {
                let job = self.decode_job(source, &body, start, &pack, &w);
                async move {
                    let _permit = limits.decoding.acquire().await.expect("never closed");
                    let job = job?;
                    let done = tokio::task::spawn_blocking(move || job.run())
                        .await
                        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                    Ok::<_, Error>((w, done))
                }
            })
            .buffered(DECODES_IN_FLIGHT);
        let mut decoded = Vec::new();
        while let Some(next) = decoding.next().await {
            let (w, done) = next?;
            match (done, defer) {
                (Decoded::Written, _) => {}
                (Decoded::Kept(bytes), _) => {
                    let place = source.scratch.keep(&bytes)?;
                    source.written.borrow_mut().insert(w.chunk, place);
                }
                // A base not here, or not checked and the frame does not
                // decode against it: a later phase checks it (or downloads
                // it) and decodes again.
                (Decoded::NoBase | Decoded::Retry(_), Some(defer)) => {
                    defer.borrow_mut().push(w);
                    continue;
                }
                (Decoded::NoBase, None) => {
                    return Err(Error::Integrity {
                        subject: format!("chunk {} in pack {pack}", w.chunk),
                        detail: format!(
                            "its base chunk {} is nowhere to be found",
                            w.base.expect("a delta has a base")
                        ),
                    });
                }
                (Decoded::Retry(e) | Decoded::Refused(e), _) => return Err(e),
            }
            decoded.push(w);
        }
        range.chunks = decoded;
        Ok((range, len))
    }

    /// What decoding `w` (its frame in `body`, a range of `pack` from
    /// `start`) needs: where its base may be read, and its targets.
    fn decode_job(
        &self,
        source: &Source<'_>,
        body: &bytes::Bytes,
        start: u64,
        pack: &Digest,
        w: &Wanted,
    ) -> Result<Decode> {
        let at = (w.frame.0 - start) as usize;
        Ok(Decode {
            frame: body.slice(at..at + w.frame.1 as usize),
            len: w.len,
            chunk: w.chunk,
            pack: *pack,
            bases: w
                .base
                .as_ref()
                .map(|b| self.base_sources(&source.written.borrow(), b))
                .transpose()?,
            targets: w
                .targets
                .iter()
                .map(|&(index, offset)| (source.files[index].target(), offset))
                .collect(),
        })
    }
}

/// What bounds one download phase: bytes of ranges in memory, and frames
/// being decoded.
struct Limits {
    budget: ByteBudget,
    decoding: tokio::sync::Semaphore,
}

/// Frames decoded at once, each on a blocking thread (read its base,
/// decompress, check, write): the thread that runs the transfers only
/// plans them, and the followers find each file's regions landed in order.
const DECODES_IN_FLIGHT: usize = 2;

/// One frame to decode on a blocking thread, with everything it needs.
struct Decode {
    frame: bytes::Bytes,
    len: u64,
    chunk: Digest,
    pack: Digest,
    /// Where its base may be read, best first (`None`: not a delta).
    bases: Option<Vec<(Place, bool)>>,
    /// Where it is written (none: a base no file uses, kept by the caller).
    targets: Vec<(Target, u64)>,
}

/// What became of a frame.
enum Decoded {
    /// Checked and written to its targets.
    Written,
    /// Checked; no file holds it (a base for other deltas).
    Kept(Vec<u8>),
    /// A delta whose base is nowhere here.
    NoBase,
    /// It did not decode against a base not checked: worth retrying once
    /// the base is checked or downloaded.
    Retry(Error),
    /// It does not decode, or is not the chunk it claims to be.
    Refused(Error),
}

impl Decode {
    fn run(self) -> Decoded {
        let (base, checked) = match &self.bases {
            None => (None, true),
            Some(sources) => match read_first(sources) {
                Some((bytes, checked)) => (Some(bytes), checked),
                None => return Decoded::NoBase,
            },
        };
        let exact = !self.targets.is_empty();
        let bytes = match decompress_chunk(
            &self.frame,
            self.len,
            exact,
            base.as_deref(),
            &self.chunk,
            &self.pack,
        ) {
            Ok(bytes) => bytes,
            Err(e) if !checked => return Decoded::Retry(e),
            Err(e) => return Decoded::Refused(e),
        };
        if self.targets.is_empty() {
            return Decoded::Kept(bytes);
        }
        for (target, offset) in &self.targets {
            if let Err(e) = target.write(&bytes, *offset) {
                return Decoded::Refused(e);
            }
        }
        Decoded::Written
    }
}

/// Decompress a downloaded chunk frame (against `base` as its zstd prefix
/// when it is a delta), bounded by the chunk's length (exactly `len` when
/// `exact`, else at most), and check it is the chunk the map names.
fn decompress_chunk(
    frame: &[u8],
    len: u64,
    exact: bool,
    base: Option<&[u8]>,
    chunk: &Digest,
    pack: &Digest,
) -> Result<Vec<u8>> {
    use std::io::Read;
    let subject = format!("chunk {chunk} in pack {pack}");
    let refused = |e: std::io::Error| {
        malformed(
            &subject,
            format!("not a zstd frame of at most {len} bytes: {e}"),
        )
    };
    let mut bytes = Vec::with_capacity(len as usize);
    match base {
        None => {
            zstd::stream::read::Decoder::with_buffer(frame)
                .map_err(refused)?
                .single_frame()
                .take(len + 1)
                .read_to_end(&mut bytes)
                .map_err(refused)?;
        }
        Some(base) => {
            zstd::stream::read::Decoder::with_ref_prefix(std::io::BufReader::new(frame), base)
                .map_err(refused)?
                .single_frame()
                .take(len + 1)
                .read_to_end(&mut bytes)
                .map_err(refused)?;
        }
    }
    if bytes.len() as u64 > len {
        return Err(malformed(
            &subject,
            format!("decompresses to more than the chunk's {len} bytes"),
        ));
    }
    let length_ok = if exact {
        bytes.len() as u64 == len
    } else {
        bytes.len() as u64 <= len
    };
    if !length_ok || Digest::of(&bytes) != *chunk {
        return Err(Error::Integrity {
            subject,
            detail: format!(
                "decompresses to {} bytes that are not chunk {chunk}",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}
