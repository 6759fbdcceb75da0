//! Assemble: write every file of each snapshot's chunk map into the
//! lease's staging: chunks already there (an interrupted pull's), then
//! chunks found locally and downloads at the same time. Holes stay holes.
//! Each file's followers hash it as its chunks land, on threads of their
//! own.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::follow::{FollowSpec, Follower, Staged};
use super::local::{Scratch, Written, clear_unlisted, holds, open_staged, read_source};
use super::report::Transfer;
use super::resolve::RemoteSnapshot;
use super::transfer::{Range, Source, Wanted};
use crate::journal::Lease;
use crate::model::chunk::{CHUNK_SIZE, Chunk, ChunkList};
use crate::model::digest::Digest;
use crate::model::error::{IoContext, Result};
use crate::ops::registry::Registry;
use crate::process::progress::Progress;
use crate::remote::Client;
use crate::remote::format::{ChunkMap, MapFile, malformed};

/// The most files hashed at once: one per core (two threads each), and
/// never more than this, so their buffers stay small beside the 64 MiB
/// bound.
const MAX_FOLLOWED: usize = 8;

/// Local chunks read and checked at once, each on a blocking thread, beside
/// the hashing threads: the thread that writes them then has only the
/// writes, and a core the hashing leaves idle is used.
const COPIES_IN_FLIGHT: usize = 2;

/// A snapshot assembled in staging.
pub(super) struct Assembled {
    /// Its chunk map.
    pub(super) map: ChunkMap,
    /// The directory its files are in.
    pub(super) dir: PathBuf,
    /// The size of each of its packs.
    pub(super) pack_sizes: Vec<u64>,
    /// The chunks downloaded and decoded: what the repository is known to
    /// hold (the rest of the map is its claim, unchecked).
    pub(super) downloaded: HashSet<Digest>,
    /// Each file's chunk list as the map gives it, every chunk checked as
    /// it was written (by `map.files`).
    pub(super) lists: Vec<ChunkList>,
    /// Each file's hashing threads (by `map.files`).
    pub(super) followers: Vec<Follower>,
}

impl Registry {
    /// Fetch each snapshot's chunk map and assemble its files in the
    /// lease's staging, parents first.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn assemble_chain(
        &self,
        client: &Client,
        repo: &str,
        lease: &Lease,
        chain: &[RemoteSnapshot],
        jobs: usize,
        max_file: u64,
        report: &mut Transfer,
        progress: &dyn Progress,
    ) -> Result<Vec<Assembled>> {
        let mut written = Written::new();
        let mut maps: Vec<Assembled> = Vec::new();
        let most = crate::process::threads::available().min(MAX_FOLLOWED);
        for s in chain {
            let (map, pack_sizes) = self.fetch_map(client, repo, s, max_file, report).await?;
            crate::process::timeline::mark("assemble: chunk map fetched");
            let lists = map
                .files
                .iter()
                .map(|f| listed_chunks(&map, f, &s.parsed.digest))
                .collect::<Result<Vec<_>>>()?;
            wait_for_a_core(&mut maps, most);
            let total = map
                .files
                .iter()
                .map(|f| f.extents.len() as u64)
                .sum::<u64>();
            progress.start("pull", Some(total * map.chunk_size));
            let dir = lease.staging().join("pull").join(s.parsed.digest.hex());
            std::fs::create_dir_all(&dir).at("create directory", &dir)?;
            let files = self.open_files(&dir, &map)?;
            let followers = follow(s, &map, &files)?;
            crate::process::timeline::mark("assemble: followers started");
            let downloaded = self
                .assemble(
                    client,
                    repo,
                    &map,
                    &files,
                    jobs,
                    &pack_sizes,
                    &mut written,
                    report,
                    progress,
                )
                .await?;
            let manifest_path = dir.join("manifest.json");
            std::fs::write(&manifest_path, &s.config).at("write", &manifest_path)?;
            progress.finish();
            maps.push(Assembled {
                map,
                dir,
                pack_sizes,
                downloaded,
                lists,
                followers,
            });
        }
        Ok(maps)
    }

    /// Open (or reopen, to resume) each file of `map` in `dir`.
    fn open_files(&self, dir: &Path, map: &ChunkMap) -> Result<Vec<Staged>> {
        let mut files = Vec::new();
        for f in &map.files {
            let path = dir.join(&f.path);
            let spans: Vec<(u64, u64)> = f
                .extents
                .iter()
                .map(|&(offset, _)| (offset, map.chunk_len(f, offset)))
                .collect();
            let (file, fresh) = open_staged(&path, f.size)?;
            // What an earlier run wrote where this map has holes (the
            // parent's map there may have changed since) goes.
            let resumed = !fresh && clear_unlisted(&file, &path, f.size, &spans)?;
            files.push(Staged::new(file, path, spans, resumed));
        }
        Ok(files)
    }

    /// Write every file of `map` into `files`: chunks already there (an
    /// interrupted pull's), then chunks found locally while the rest
    /// downloads, so the followers find each region landed as soon as
    /// possible. Chunks a local file turned out not to hold, and deltas
    /// whose base is not here, come down last.
    #[allow(clippy::too_many_arguments)]
    async fn assemble(
        &self,
        client: &Client,
        repo: &str,
        map: &ChunkMap,
        files: &[Staged],
        jobs: usize,
        pack_sizes: &[u64],
        written: &mut Written,
        report: &mut Transfer,
        progress: &dyn Progress,
    ) -> Result<HashSet<Digest>> {
        let (copies, wanted) = self.plan_local(map, files, written, report, progress)?;
        let (first, later) = self.first_and_later(wanted, written)?;
        crate::process::timeline::mark(&format!(
            "assemble: {} chunks to copy, {} frames to download first, {} deltas after",
            copies.len(),
            first.len(),
            later.len()
        ));
        let cell = std::cell::RefCell::new(std::mem::take(written));
        let dir = files[0]
            .path
            .parent()
            .expect("a staged file is in a directory");
        let scratch = Scratch::create(dir.with_extension("bases"))?;
        let source = Source {
            client,
            repo,
            map,
            pack_sizes,
            files,
            written: &cell,
            scratch: &scratch,
            jobs,
        };
        let mut downloaded = HashSet::new();
        let mut landed = |range: &Range, received: u64| -> Result<()> {
            report.bytes_downloaded += received;
            downloaded.extend(range.chunks.iter().map(|w| w.chunk));
            for w in range.chunks.iter().filter(|w| !w.targets.is_empty()) {
                report.chunks_downloaded += 1;
                let (index, offset) = w.targets[0];
                cell.borrow_mut()
                    .insert(w.chunk, (files[index].path.clone(), offset, w.len));
                progress.advance(w.len * w.targets.len() as u64);
                crate::process::failpoint::hit(crate::process::failpoint::PULL_CHUNK_WRITTEN)?;
            }
            Ok(())
        };
        let result = self
            .fetch_all(&source, copies, first, later, &mut landed, progress)
            .await;
        if let Ok((chunks, bytes)) = result {
            report.chunks_local += chunks;
            report.bytes_local += bytes;
        }
        // The bases' places go with the file: a later snapshot of the chain
        // finds its own bases here or downloads them again.
        let mut written_now = cell.into_inner();
        written_now.retain(|_, (path, ..)| *path != scratch.path());
        *written = written_now;
        scratch.remove()?;
        result.map(|_| downloaded)
    }

    /// The frames to download: those wanted first (plain frames, and deltas
    /// whose base is here), and the deltas whose base must come down first.
    fn first_and_later(
        &self,
        wanted: HashMap<Digest, Wanted>,
        written: &Written,
    ) -> Result<(Vec<Wanted>, Vec<Wanted>)> {
        let (deltas, mut first): (Vec<Wanted>, Vec<Wanted>) =
            wanted.into_values().partition(|w| w.base.is_some());
        let mut later = Vec::new();
        for d in deltas {
            let base = d.base.expect("a delta has a base");
            if self.local_candidate(written, &base, None)? {
                first.push(d);
            } else {
                later.push(d);
            }
        }
        Ok((first, later))
    }

    /// Copy the local chunks `copies` while `first` downloads, then
    /// download what that left: the chunks a local file no longer held and
    /// the deltas `later`, plain frames (their bases among them) before
    /// deltas. The chunks and bytes copied locally.
    async fn fetch_all(
        &self,
        source: &Source<'_>,
        copies: Vec<Wanted>,
        first: Vec<Wanted>,
        mut later: Vec<Wanted>,
        landed: &mut dyn FnMut(&Range, u64) -> Result<()>,
        progress: &dyn Progress,
    ) -> Result<(u64, u64)> {
        let deferred = std::cell::RefCell::new(Vec::new());
        let ((copied, missed), ()) = tokio::try_join!(
            self.copy_local(source.files, source.written, copies, progress),
            self.download(source, first, Some(&deferred), landed),
        )?;
        crate::process::timeline::mark("assemble: local copies and first downloads done");
        later.extend(merged(missed));
        later.append(&mut deferred.borrow_mut());
        let (deltas, mut plain): (Vec<Wanted>, Vec<Wanted>) =
            later.into_iter().partition(|w| w.base.is_some());
        self.add_bases(
            source.map,
            &deltas,
            &mut plain,
            &mut source.written.borrow_mut(),
        )?;
        for phase in [plain, deltas] {
            self.download(source, phase, None, landed).await?;
        }
        crate::process::timeline::mark("assemble: downloads done");
        Ok(copied)
    }

    /// Sort the chunks of `map` (in offset order): those an interrupted run
    /// already wrote are kept (checked here), those the index says are on
    /// this machine are to be copied (one target each), the rest to be
    /// downloaded.
    fn plan_local(
        &self,
        map: &ChunkMap,
        files: &[Staged],
        written: &mut Written,
        report: &mut Transfer,
        progress: &dyn Progress,
    ) -> Result<(Vec<Wanted>, HashMap<Digest, Wanted>)> {
        let mut copies = Vec::new();
        let mut wanted: HashMap<Digest, Wanted> = HashMap::new();
        let bases = map.bases();
        for (index, (f, staged)) in map.files.iter().zip(files).enumerate() {
            let path = &staged.path;
            for &(offset, i) in &f.extents {
                let c = map.chunks[i as usize];
                let len = map.chunk_len(f, offset);
                if staged.resumed && holds(&staged.file, offset, len, &c.chunk())? {
                    report.chunks_resumed += 1;
                    written.insert(c.chunk(), (path.clone(), offset, len));
                    staged.landing.land(offset);
                    progress.advance(len);
                    continue;
                }
                let w = Wanted {
                    chunk: c.chunk(),
                    pack: c.pack(),
                    frame: (c.offset(), c.frame_len()),
                    len,
                    base: bases[i as usize].map(|b| map.chunks[b].chunk()),
                    targets: vec![(index, offset)],
                };
                if !wanted.contains_key(&c.chunk())
                    && self.local_candidate(written, &c.chunk(), Some(len))?
                {
                    copies.push(w);
                    continue;
                }
                wanted
                    .entry(c.chunk())
                    .and_modify(|e| e.targets.push((index, offset)))
                    .or_insert(w);
            }
        }
        Ok((copies, wanted))
    }

    /// Copy `copies` (each chunk to its one target) from where they are on
    /// this machine, each read and checked on a blocking thread
    /// ([`COPIES_IN_FLIGHT`] at a time) and written here in offset order,
    /// while downloads go on. Returns the chunks and bytes copied, and the
    /// chunks no longer found (to download).
    async fn copy_local(
        &self,
        files: &[Staged],
        written: &std::cell::RefCell<Written>,
        copies: Vec<Wanted>,
        progress: &dyn Progress,
    ) -> Result<((u64, u64), Vec<Wanted>)> {
        use futures_util::stream::{self, StreamExt};
        let (mut chunks, mut bytes, mut missed) = (0, 0, Vec::new());
        let mut read = stream::iter(copies)
            .map(|w| {
                let sources = self.chunk_sources(&written.borrow(), &w.chunk, w.len);
                async move {
                    let sources = sources?;
                    let chunk = w.chunk;
                    let buf = tokio::task::spawn_blocking(move || read_source(&sources, &chunk))
                        .await
                        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                    Ok::<_, crate::model::error::Error>((w, buf))
                }
            })
            .buffered(COPIES_IN_FLIGHT);
        while let Some(done) = read.next().await {
            let (w, buf) = done?;
            let Some(buf) = buf else {
                missed.push(w);
                continue;
            };
            let (index, offset) = w.targets[0];
            files[index].write(&buf, offset)?;
            chunks += 1;
            bytes += w.len;
            written
                .borrow_mut()
                .insert(w.chunk, (files[index].path.clone(), offset, w.len));
            progress.advance(w.len);
            crate::process::failpoint::hit(crate::process::failpoint::PULL_CHUNK_WRITTEN)?;
        }
        Ok(((chunks, bytes), missed))
    }

    /// Bases of `deltas` that are neither here nor downloaded anyway come
    /// down too (decoded into the scratch file, never held in memory). A
    /// base found here is checked once and its place kept in `written`,
    /// so decoding its deltas does not hash it again.
    fn add_bases(
        &self,
        map: &ChunkMap,
        deltas: &[Wanted],
        plain: &mut Vec<Wanted>,
        written: &mut Written,
    ) -> Result<()> {
        let mut extra = HashSet::new();
        for d in deltas {
            let b = d.base.expect("a delta has a base");
            if plain.iter().any(|w| w.chunk == b) || written.contains_key(&b) {
                continue;
            }
            if let Some((_, place)) = self.local_chunk(written, &b, None)? {
                written.insert(b, place);
                continue;
            }
            if extra.insert(b) {
                let i = map
                    .chunks
                    .iter()
                    .position(|c| c.chunk() == b)
                    .expect("a base is in the map");
                let c = map.chunks[i];
                plain.push(Wanted {
                    chunk: b,
                    pack: c.pack(),
                    frame: (c.offset(), c.frame_len()),
                    len: map.chunk_size,
                    base: None,
                    targets: Vec::new(),
                });
            }
        }
        Ok(())
    }
}

/// The same chunk wanted at several places, as one download.
fn merged(missed: Vec<Wanted>) -> Vec<Wanted> {
    let mut by_chunk: HashMap<Digest, Wanted> = HashMap::new();
    for w in missed {
        match by_chunk.entry(w.chunk) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                e.get_mut().targets.extend(w.targets)
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(w);
            }
        }
    }
    by_chunk.into_values().collect()
}

/// Earlier snapshots of the chain are whole: wait for their hashing while
/// `most` files are being hashed.
fn wait_for_a_core(maps: &mut [Assembled], most: usize) {
    let busy = |maps: &[Assembled]| {
        maps.iter()
            .flat_map(|a| &a.followers)
            .filter(|f| !f.is_done())
            .count()
    };
    while busy(maps) >= most {
        if let Some(f) = maps
            .iter_mut()
            .flat_map(|a| &mut a.followers)
            .find(|f| !f.is_done())
        {
            f.join();
        }
    }
}

/// Start hashing each of `files`, the files of snapshot `s`'s `map`.
fn follow(s: &RemoteSnapshot, map: &ChunkMap, files: &[Staged]) -> Result<Vec<Follower>> {
    let upper = &s.parsed.manifest.upper;
    files
        .iter()
        .zip(&map.files)
        .map(|(staged, f)| {
            let spec = FollowSpec {
                size: f.size,
                integrity: (f.path == upper.file)
                    .then(|| upper.integrity.clone())
                    .flatten(),
                recut: map.chunk_size != CHUNK_SIZE,
                chunk_size: map.chunk_size,
                subject: format!("chunk map of {}", s.parsed.digest),
            };
            Follower::start(staged, spec)
        })
        .collect()
}

/// A file's chunk list as `map` gives it. A chunk of zeros is refused: it
/// is a hole, which a chunk list never names (the one cut here would
/// differ from the map's).
fn listed_chunks(map: &ChunkMap, f: &MapFile, snapshot: &Digest) -> Result<ChunkList> {
    let mut zeros: HashMap<u64, Digest> = HashMap::new();
    let mut chunks = Vec::with_capacity(f.extents.len());
    for &(offset, i) in &f.extents {
        let length = map.chunk_len(f, offset);
        let digest = map.chunks[i as usize].chunk();
        let zero = *zeros
            .entry(length)
            .or_insert_with(|| Digest::of(&vec![0u8; length as usize]));
        if digest == zero {
            return Err(malformed(
                &format!("chunk map of {snapshot}"),
                format!(
                    "file {} assembled from it differs from it: the map lists chunk data at offset {offset}, where the file holds only zeros",
                    crate::model::text::escape(&f.path)
                ),
            ));
        }
        chunks.push(Chunk {
            offset,
            length,
            digest,
        });
    }
    Ok(ChunkList {
        chunk_size: map.chunk_size,
        chunks,
    })
}
