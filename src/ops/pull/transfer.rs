//! Transfer: the frames a pull lacks, coalesced into range requests and
//! fetched `jobs` at a time, each decoded (a delta against its base),
//! checked and written where it goes.

use futures_util::stream::{self, StreamExt};

use super::follow::Staged;
use super::local::{Scratch, Written};
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
/// Bytes of frames not needed that a range may span rather than split.
const MAX_GAP: u64 = 64 << 10;

/// Group the wanted frames into range requests: by pack, in pack order,
/// a new range where the gap to the last frame is large or the range full.
fn coalesce(mut wanted: Vec<Wanted>) -> Vec<Range> {
    wanted.sort_by_key(|w| (w.pack, w.frame.0));
    let mut ranges: Vec<Range> = Vec::new();
    for w in wanted {
        if let Some(r) = ranges.last_mut()
            && r.pack == w.pack
        {
            let (start, len) = r.span();
            let end = start + len;
            if w.frame.0 >= end
                && w.frame.0 - end <= MAX_GAP
                && w.frame.0 + w.frame.1 - start <= MAX_RANGE
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
        let Source {
            client,
            repo,
            map,
            pack_sizes,
            jobs,
            ..
        } = *source;
        let ranges = coalesce(wanted);
        let budget = ByteBudget::new(MAX_IN_FLIGHT_BYTES);
        let budget = &budget;
        let mut results = stream::iter(ranges.into_iter().map(|mut range| async move {
            let pack = map.packs[range.pack];
            let (start, len) = range.span();
            let _taken = budget.take(len).await;
            let body = client
                .get_range(repo, &pack, pack_sizes[range.pack], start, len)
                .await?;
            let mut decoded = Vec::with_capacity(range.chunks.len());
            for w in std::mem::take(&mut range.chunks) {
                let frame = &body[(w.frame.0 - start) as usize..][..w.frame.1 as usize];
                if let Some(w) = self.decode_frame(source, &pack, frame, w, defer)? {
                    decoded.push(w);
                }
                // Local copies and other ranges go on between chunks, so
                // the followers find each file's regions written in order.
                tokio::task::yield_now().await;
            }
            range.chunks = decoded;
            Ok::<_, Error>((range, len))
        }))
        .buffer_unordered(jobs);
        while let Some(done) = results.next().await {
            let (range, received) = done?;
            landed(&range, received)?;
        }
        Ok(())
    }

    /// Decode one downloaded `frame` of `pack` and write it where `w`
    /// says (or keep it in the scratch file when no file uses it); returns
    /// it, or `None` when it went to `defer`: its base is not here yet, or
    /// was not checked and the decoded chunk failed its check.
    fn decode_frame(
        &self,
        source: &Source<'_>,
        pack: &Digest,
        frame: &[u8],
        w: Wanted,
        defer: Option<&std::cell::RefCell<Vec<Wanted>>>,
    ) -> Result<Option<Wanted>> {
        let (files, written, scratch) = (source.files, source.written, source.scratch);
        let (base, checked) = match &w.base {
            Some(b) => match (self.base_bytes(&written.borrow(), b)?, defer) {
                (Some((bytes, checked)), _) => (Some(bytes), checked),
                (None, Some(defer)) => {
                    defer.borrow_mut().push(w);
                    return Ok(None);
                }
                (None, None) => {
                    return Err(Error::Integrity {
                        subject: format!("chunk {} in pack {pack}", w.chunk),
                        detail: format!("its base chunk {b} is nowhere to be found"),
                    });
                }
            },
            None => (None, true),
        };
        let exact = !w.targets.is_empty();
        let bytes = match decompress_chunk(frame, w.len, exact, base.as_deref(), &w.chunk, pack) {
            // The base was not checked: a later phase checks it (or
            // downloads it) and decodes again.
            Err(_) if !checked && let Some(defer) = defer => {
                defer.borrow_mut().push(w);
                return Ok(None);
            }
            decoded => decoded?,
        };
        if w.targets.is_empty() {
            let place = scratch.keep(&bytes)?;
            written.borrow_mut().insert(w.chunk, place);
        } else {
            for &(index, offset) in &w.targets {
                files[index].write(&bytes, offset)?;
            }
        }
        Ok(Some(w))
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
