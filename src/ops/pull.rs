//! `pull`: a snapshot and the ancestors the registry lacks, from an OCI
//! registry (README "Push and pull"). Every chunk found locally (any
//! snapshot, through the chunk index) is copied; only the rest is
//! downloaded. Files are assembled in the lease's staging (holes stay
//! holes), hashed in place as `add` hashes, and installed by the same
//! journaled install as import: all or nothing.
//!
//! An interrupted pull (a dropped connection, kill -9) leaves its lease's
//! staging behind; the next pull of the same manifest adopts it and keeps
//! every chunk already written. gc keeps such staging for its grace period.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::db::{self, ImportFileRow, ImportState, SnapshotFileRow};
use crate::journal::Lease;
use crate::model::chunk::CHUNK_SIZE;
use crate::model::digest::Digest;
use crate::model::error::{Error, IoContext, Result};
use crate::model::image::CacheFile;
use crate::model::manifest::ParsedManifest;
use crate::ops::install::install;
use crate::ops::registry::Registry;
use crate::process::progress::Progress;
use crate::remote::format::{
    CHUNK_MAP, ChunkMap, IMAGE_CACHE_ARTIFACT, MAX_CHUNK_MAP_BYTES, MAX_PACK_BYTES, MapFile,
    OciManifest, PACK, SNAPSHOT_ARTIFACT, SNAPSHOT_CONFIG, TITLE, malformed, parse_config,
};
use crate::remote::reference::{image_tag, snapshot_of_tag, snapshot_tag};
use crate::remote::{Access, Client, ClientOptions, RemoteRef};
use crate::store::files::write_at_sparse;
use crate::store::layout::SnapshotName;
use crate::store::staged::{StagedSet, StagedSnapshot};

/// The most snapshots one pull walks up a chain.
pub const MAX_CHAIN: usize = 100_000;

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// The name for the head snapshot (default: the name it was pushed under).
    pub name: Option<String>,
    /// Blob transfers in flight (0: the default).
    pub jobs: usize,
    /// The largest file a chunk map may describe (default 1 TiB).
    pub max_file_bytes: Option<u64>,
    /// How to reach the registry.
    pub client: ClientOptions,
}

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    /// The head snapshot's digest.
    pub head: Digest,
    /// Its name in this registry.
    pub name: String,
    /// Digest of its OCI manifest.
    pub manifest_digest: Digest,
    /// Snapshots newly installed, parents first.
    pub imported: Vec<Digest>,
    /// Snapshots that were already here.
    pub skipped: Vec<Digest>,
    /// What crossed the wire and what did not.
    #[serde(flatten)]
    pub transfer: Transfer,
    /// Image cache files installed.
    pub image_files_installed: usize,
    /// Set when the root is a microsandbox home whose index should learn of the new snapshots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub microsandbox_hint: Option<String>,
}

/// The chunks and bytes a pull moved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Transfer {
    /// Chunks downloaded.
    pub chunks_downloaded: u64,
    /// Bytes received (pack ranges, chunk maps, configs, image files).
    pub bytes_downloaded: u64,
    /// Chunks copied from snapshots already in this registry (or pulled earlier in this chain).
    pub chunks_local: u64,
    /// Their bytes.
    pub bytes_local: u64,
    /// Chunks an interrupted earlier pull had already written.
    pub chunks_resumed: u64,
}

/// A snapshot of the chain being pulled, as its manifest describes it.
struct RemoteSnapshot {
    manifest: OciManifest,
    config: Bytes,
    parsed: ParsedManifest,
}

/// A chunk to download: its frame in a pack, and the file offsets it goes to.
struct Wanted {
    chunk: Digest,
    pack: usize,
    /// Offset and length of its zstd frame in the pack.
    frame: (u64, u64),
    /// Its uncompressed length (at most, for a base no file holds).
    len: u64,
    /// The chunk its frame is a delta against, if any.
    base: Option<Digest>,
    /// (file index, offset) it is written at.
    targets: Vec<(usize, u64)>,
}

/// Frames of one pack fetched with one range request.
struct Range {
    pack: usize,
    chunks: Vec<Wanted>,
}

impl Range {
    /// First byte and length of the range.
    fn span(&self) -> (u64, u64) {
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

/// Where a chunk's bytes already are: file, offset, length.
type Written = HashMap<Digest, (PathBuf, u64, u64)>;

impl Registry {
    /// Pull `source` (a tag or manifest digest) into this registry.
    pub fn pull(
        &mut self,
        source: &RemoteRef,
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<PullReport> {
        let reference = source.manifest_reference().ok_or_else(|| {
            Error::Usage(format!(
                "{source}: give the snapshot to pull as REPOSITORY:TAG or REPOSITORY@sha256:HEX"
            ))
        })?;
        let head_name = opts.name.as_deref().map(SnapshotName::chosen).transpose()?;
        let client = Client::new(&source.registry, &opts.client)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .at("start", "the async runtime")?;
        let mut transfer = Transfer::default();
        let (chain, head, manifest_digest) =
            runtime.block_on(self.resolve_chain(&client, source, &reference, &mut transfer))?;
        let mut report = PullReport {
            head,
            name: String::new(),
            manifest_digest,
            imported: Vec::new(),
            skipped: Vec::new(),
            transfer,
            image_files_installed: 0,
            microsandbox_hint: None,
        };
        if chain.is_empty() {
            let row =
                db::snapshots::snapshot_by_digest(self.db().conn(), &head)?.ok_or_else(|| {
                    Error::NotFound {
                        what: "snapshot",
                        reference: head.to_string(),
                    }
                })?;
            report.name = match head_name {
                // As import does: a head already here takes the name asked for.
                Some(n) if n.as_str() != row.name => {
                    self.rename(&head.to_string(), n.as_str())?.name
                }
                _ => row.name,
            };
            report.skipped.push(head);
            return Ok(report);
        }
        let key = format!(
            "{}{}@{manifest_digest}",
            db::gc::PULL_SOURCE_PREFIX,
            source.repository_name()
        );
        let mut lease = self.pull_lease(&key)?;
        let result = runtime.block_on(self.pull_leased(
            &client,
            source,
            &mut lease,
            &chain,
            head_name.as_ref(),
            opts,
            &mut report,
            progress,
        ));
        match &result {
            // What was downloaded stays for the rerun to resume from.
            Err(e) if resumable(e) => lease.release(),
            Ok(_) => lease.finish(self.db_mut(), ImportState::Done, None)?,
            Err(e) => {
                let message = e.with_causes();
                lease.finish(self.db_mut(), ImportState::Failed, Some(&message))?;
            }
        }
        result?;
        Ok(report)
    }

    /// The lease of an interrupted pull of the same manifest, or a new one.
    fn pull_lease(&mut self, key: &str) -> Result<Lease> {
        let (layout, db) = self.parts();
        for row in db::imports::imports_in_states(db.conn(), &[ImportState::Staging])? {
            if row.source == key
                && let Some(lease) = Lease::adopt(layout, db, &row.id)?
            {
                return Ok(lease);
            }
        }
        Lease::acquire(layout, db, key)
    }

    /// Fetch the head's manifest and config, then its parents' (through
    /// their `sha256-<hex>` tags) until one is present here. Returns the
    /// snapshots to pull, parents first (empty when the head is here).
    async fn resolve_chain(
        &self,
        client: &Client,
        source: &RemoteRef,
        reference: &str,
        transfer: &mut Transfer,
    ) -> Result<(Vec<RemoteSnapshot>, Digest, Digest)> {
        let repo = source.repository.as_str();
        client.ping(repo, Access::Pull).await?;
        let (head, manifest_digest) = fetch_snapshot(client, repo, reference, transfer)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "snapshot",
                reference: source.to_string(),
            })?;
        let head_digest = head.parsed.digest;
        // A `sha256-<hex>` tag names a snapshot by its identity: the
        // registry must serve that snapshot under it, not another.
        if let Some(tag) = &source.tag
            && let Some(named) = snapshot_of_tag(tag)
            && named != head_digest
        {
            return Err(Error::Integrity {
                subject: format!("{}:{tag}", source.repository_name()),
                detail: format!("names snapshot {head_digest}, not {named}"),
            });
        }
        let conn = self.db().conn();
        let mut chain = Vec::new();
        let mut seen = HashSet::new();
        let mut next = Some(head);
        while let Some(s) = next.take() {
            if db::snapshots::snapshot_by_digest(conn, &s.parsed.digest)?.is_some() {
                break;
            }
            if !seen.insert(s.parsed.digest) || seen.len() > MAX_CHAIN {
                return Err(malformed(
                    &source.repository_name(),
                    format!("the chain above {head_digest} loops or is longer than {MAX_CHAIN}"),
                ));
            }
            if let Some(parent) = s.parsed.manifest.parent
                && db::snapshots::snapshot_by_digest(conn, &parent)?.is_none()
            {
                let tag = snapshot_tag(&parent);
                let (p, _) = fetch_snapshot(client, repo, &tag, transfer)
                    .await?
                    .ok_or_else(|| Error::NotFound {
                        what: "parent",
                        reference: format!(
                            "{parent} of {}: neither in this registry nor tagged {tag} in {}",
                            s.parsed.digest,
                            source.repository_name()
                        ),
                    })?;
                if p.parsed.digest != parent {
                    return Err(Error::Integrity {
                        subject: format!("{}:{tag}", source.repository_name()),
                        detail: format!("names snapshot {}, not {parent}", p.parsed.digest),
                    });
                }
                next = Some(p);
            }
            chain.push(s);
        }
        chain.reverse();
        Ok((chain, head_digest, manifest_digest))
    }

    #[allow(clippy::too_many_arguments)]
    async fn pull_leased(
        &mut self,
        client: &Client,
        source: &RemoteRef,
        lease: &mut Lease,
        chain: &[RemoteSnapshot],
        head_name: Option<&SnapshotName>,
        opts: &PullOptions,
        report: &mut PullReport,
        progress: &dyn Progress,
    ) -> Result<()> {
        let repo = source.repository.as_str();
        let jobs = if opts.jobs == 0 {
            crate::ops::push::DEFAULT_JOBS
        } else {
            opts.jobs
        };
        let max_file = opts
            .max_file_bytes
            .unwrap_or(crate::archive::entry::DEFAULT_MAX_FILE_BYTES);
        let images: HashSet<Digest> = chain
            .iter()
            .map(|s| s.parsed.manifest.image.manifest_digest)
            .collect();
        for image in &images {
            db::imports::insert_pin(self.db().conn(), lease.id(), image)?;
        }
        let mut written = Written::new();
        let mut maps = Vec::new();
        for s in chain {
            let (map, pack_sizes) = self
                .fetch_map(client, repo, s, max_file, &mut report.transfer)
                .await?;
            let total = map
                .files
                .iter()
                .map(|f| f.extents.len() as u64)
                .sum::<u64>();
            progress.start("pull", Some(total * map.chunk_size));
            let dir = lease.staging().join("pull").join(s.parsed.digest.hex());
            std::fs::create_dir_all(&dir).at("create directory", &dir)?;
            self.assemble(
                client,
                repo,
                &dir,
                &map,
                jobs,
                &pack_sizes,
                &mut written,
                &mut report.transfer,
                progress,
            )
            .await?;
            let manifest_path = dir.join("manifest.json");
            std::fs::write(&manifest_path, &s.config).at("write", &manifest_path)?;
            progress.finish();
            maps.push((map, dir, pack_sizes));
        }
        crate::process::failpoint::hit(crate::process::failpoint::PULL_ASSEMBLED)?;

        let mut set = StagedSet::default();
        let mut journal = Vec::new();
        let names = self.pull_names(chain, head_name)?;
        for ((s, (map, dir, _)), name) in chain.iter().zip(&maps).zip(names) {
            let staged = self.check_assembled(s, map, dir, name, source, &mut journal, progress)?;
            set.snapshots.push(staged);
        }
        // What an interrupted run of this pull staged of the image is redone.
        crate::store::files::remove_dir_if_exists(&lease.staging().join("cache"))?;
        for image in &images {
            let parsed = &chain
                .iter()
                .find(|s| s.parsed.manifest.image.manifest_digest == *image)
                .expect("every image comes from the chain")
                .parsed;
            if db::images::image_by_digest(self.db().conn(), image)?.is_none() {
                self.pull_image(
                    client,
                    repo,
                    lease,
                    parsed,
                    report,
                    &mut journal,
                    &mut set,
                    progress,
                )
                .await?;
            }
        }
        {
            let tx = self.db_mut().write()?;
            db::imports::delete_import_files(&tx, lease.id())?;
            db::imports::insert_import_files(&tx, lease.id(), &journal)?;
            tx.commit()?;
        }
        let outcome = install(self, lease, &set)?;
        // Only the maps of an installed pull: a refused one teaches nothing.
        for (map, _, pack_sizes) in &maps {
            crate::remote::holdings::record_map(
                self.db().conn(),
                &source.registry,
                repo,
                map,
                pack_sizes,
            )?;
        }
        report.image_files_installed = outcome.cache_files_installed;
        report.imported = outcome.imported;
        report.skipped = outcome.skipped;
        let head = set.snapshots.last().expect("a chain is never empty");
        report.name = db::snapshots::snapshot_by_digest(self.db().conn(), &head.parsed.digest)?
            .map(|r| r.name)
            .unwrap_or_else(|| head.name.to_string());
        if !report.imported.is_empty() {
            report.microsandbox_hint = crate::store::shared_home::reindex_hint(self.layout());
        }
        Ok(())
    }

    /// Fetch and check the chunk map, the first layer of `s`'s manifest.
    async fn fetch_map(
        &self,
        client: &Client,
        repo: &str,
        s: &RemoteSnapshot,
        max_file: u64,
        report: &mut Transfer,
    ) -> Result<(ChunkMap, Vec<u64>)> {
        let subject = format!("manifest of snapshot {}", s.parsed.digest);
        let Some((first, chunks)) = s.manifest.layers.split_first() else {
            return Err(malformed(&subject, "has no layers".into()));
        };
        if first.media_type != CHUNK_MAP || first.size > MAX_CHUNK_MAP_BYTES {
            return Err(malformed(
                &subject,
                format!(
                    "its first layer is {} of {} bytes, not a chunk map of at most {MAX_CHUNK_MAP_BYTES}",
                    crate::model::text::escape(&first.media_type),
                    first.size
                ),
            ));
        }
        if let Some(bad) = chunks
            .iter()
            .find(|l| l.media_type != PACK || l.size > MAX_PACK_BYTES)
        {
            return Err(malformed(
                &subject,
                format!(
                    "layer {} is {} of {} bytes, not a pack of at most {MAX_PACK_BYTES}",
                    bad.digest,
                    crate::model::text::escape(&bad.media_type),
                    bad.size
                ),
            ));
        }
        let bytes = client.get_blob(repo, &first.digest, first.size).await?;
        report.bytes_downloaded += bytes.len() as u64;
        let map = ChunkMap::parse(&bytes, &s.parsed, chunks, max_file)?;
        let sizes = map.pack_sizes(chunks);
        Ok((map, sizes))
    }

    /// Write every file of `map` into `dir`: chunks already there (an
    /// interrupted pull's), then chunks found locally, then downloads.
    #[allow(clippy::too_many_arguments)]
    async fn assemble(
        &self,
        client: &Client,
        repo: &str,
        dir: &Path,
        map: &ChunkMap,
        jobs: usize,
        pack_sizes: &[u64],
        written: &mut Written,
        report: &mut Transfer,
        progress: &dyn Progress,
    ) -> Result<()> {
        let mut files = Vec::new();
        let mut wanted: HashMap<Digest, Wanted> = HashMap::new();
        let bases = map.bases();
        for f in &map.files {
            let path = dir.join(&f.path);
            let (file, fresh) = open_staged(&path, f.size)?;
            let index = files.len();
            for &(offset, i) in &f.extents {
                let c = map.chunks[i as usize];
                let len = map.chunk_len(f, offset);
                if !fresh && holds(&file, offset, len, &c.chunk())? {
                    report.chunks_resumed += 1;
                    written.insert(c.chunk(), (path.clone(), offset, len));
                    progress.advance(len);
                    continue;
                }
                if let Some(bytes) = self.local_chunk(written, &c.chunk(), Some(len))? {
                    write_at_sparse(&file, &bytes, offset).at("write", &path)?;
                    report.chunks_local += 1;
                    report.bytes_local += len;
                    written.insert(c.chunk(), (path.clone(), offset, len));
                    progress.advance(len);
                    crate::process::failpoint::hit(crate::process::failpoint::PULL_CHUNK_WRITTEN)?;
                    continue;
                }
                wanted
                    .entry(c.chunk())
                    .or_insert_with(|| Wanted {
                        chunk: c.chunk(),
                        pack: c.pack(),
                        frame: (c.offset(), c.frame_len()),
                        len,
                        base: bases[i as usize].map(|b| map.chunks[b].chunk()),
                        targets: Vec::new(),
                    })
                    .targets
                    .push((index, offset));
            }
            files.push((file, path));
        }
        let (deltas, mut plain): (Vec<Wanted>, Vec<Wanted>) =
            wanted.into_values().partition(|w| w.base.is_some());
        // Bases of deltas that are neither here nor downloaded anyway come
        // down too, kept in memory only until their deltas are decoded.
        let mut extra = HashSet::new();
        for d in &deltas {
            let b = d.base.expect("a delta has a base");
            if !plain.iter().any(|w| w.chunk == b)
                && self.local_chunk(written, &b, None)?.is_none()
                && extra.insert(b)
            {
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
        // Plain frames first (bases among them), then the deltas.
        let cell = std::cell::RefCell::new(std::mem::take(written));
        let kept = std::cell::RefCell::new(HashMap::new());
        let mut landed = |range: &Range, received: u64| -> Result<()> {
            report.bytes_downloaded += received;
            for w in range.chunks.iter().filter(|w| !w.targets.is_empty()) {
                report.chunks_downloaded += 1;
                let (index, offset) = w.targets[0];
                cell.borrow_mut()
                    .insert(w.chunk, (files[index].1.clone(), offset, w.len));
                progress.advance(w.len * w.targets.len() as u64);
                crate::process::failpoint::hit(crate::process::failpoint::PULL_CHUNK_WRITTEN)?;
            }
            Ok(())
        };
        let mut result = Ok(());
        for phase in [plain, deltas] {
            result = self
                .download(
                    client,
                    repo,
                    map,
                    pack_sizes,
                    &files,
                    &cell,
                    &kept,
                    phase,
                    jobs,
                    &mut landed,
                )
                .await;
            if result.is_err() {
                break;
            }
        }
        *written = cell.into_inner();
        result
    }

    /// Download the frames `wanted` needs, coalesced into range requests,
    /// `jobs` at a time; decode each (a delta against its base, from
    /// `kept` or this registry) and write it where it goes, calling
    /// `landed` as each range is done. Decoded chunks with no place to go
    /// (bases) are kept in `kept`.
    #[allow(clippy::too_many_arguments)]
    async fn download(
        &self,
        client: &Client,
        repo: &str,
        map: &ChunkMap,
        pack_sizes: &[u64],
        files: &[(File, PathBuf)],
        written: &std::cell::RefCell<Written>,
        kept: &std::cell::RefCell<HashMap<Digest, Vec<u8>>>,
        wanted: Vec<Wanted>,
        jobs: usize,
        landed: &mut dyn FnMut(&Range, u64) -> Result<()>,
    ) -> Result<()> {
        let ranges = coalesce(wanted);
        let mut results = stream::iter(ranges.into_iter().map(|range| async move {
            let pack = map.packs[range.pack];
            let (start, len) = range.span();
            let body = client
                .get_range(repo, &pack, pack_sizes[range.pack], start, len)
                .await?;
            for w in &range.chunks {
                let frame = &body[(w.frame.0 - start) as usize..][..w.frame.1 as usize];
                let base = match &w.base {
                    Some(b) => {
                        let held = kept.borrow().get(b).cloned();
                        let found = match held {
                            Some(bytes) => Some(bytes),
                            None => self.local_chunk(&written.borrow(), b, None)?,
                        };
                        Some(found.ok_or_else(|| Error::Integrity {
                            subject: format!("chunk {} in pack {pack}", w.chunk),
                            detail: format!("its base chunk {b} is nowhere to be found"),
                        })?)
                    }
                    None => None,
                };
                let exact = !w.targets.is_empty();
                let bytes =
                    decompress_chunk(frame, w.len, exact, base.as_deref(), &w.chunk, &pack)?;
                if w.targets.is_empty() {
                    kept.borrow_mut().insert(w.chunk, bytes);
                    continue;
                }
                for &(index, offset) in &w.targets {
                    let (file, path) = &files[index];
                    write_at_sparse(file, &bytes, offset).at("write", path)?;
                }
            }
            Ok::<_, Error>((range, len))
        }))
        .buffer_unordered(jobs);
        while let Some(done) = results.next().await {
            let (range, received) = done?;
            landed(&range, received)?;
        }
        Ok(())
    }

    /// The bytes of `chunk` (`len` bytes, when known) from this pull's
    /// files or any snapshot here, checked against its digest (a changed
    /// file is not trusted).
    fn local_chunk(
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

    /// The names the chain's snapshots are installed under: the head's
    /// `--name`, else the name each was pushed under (its title) when it is
    /// valid and free, else its digest prefix, as import names them.
    fn pull_names(
        &self,
        chain: &[RemoteSnapshot],
        head_name: Option<&SnapshotName>,
    ) -> Result<Vec<SnapshotName>> {
        let conn = self.db().conn();
        let mut used = HashSet::new();
        let mut names = Vec::new();
        for (i, s) in chain.iter().enumerate() {
            let digest = s.parsed.digest;
            let carried = s
                .manifest
                .annotations
                .get(TITLE)
                .and_then(|t| SnapshotName::chosen_for(t, &digest).ok())
                .filter(|n| !used.contains(n.as_str()))
                .filter(|n| {
                    db::snapshots::snapshot_by_name(conn, n.as_str())
                        .ok()
                        .flatten()
                        .is_none_or(|other| other.digest == digest)
                });
            let name = match (head_name, i + 1 == chain.len(), carried) {
                (Some(n), true, _) => n.clone(),
                (_, _, Some(n)) => n,
                _ => digest.archive_prefix().parse()?,
            };
            used.insert(name.to_string());
            names.push(name);
        }
        Ok(names)
    }

    /// Hash the assembled files in place, as `add` hashes what it stages:
    /// the upper's integrity must hold and every file must be what its
    /// chunk map says; returns the staged snapshot for install.
    #[allow(clippy::too_many_arguments)]
    fn check_assembled(
        &self,
        s: &RemoteSnapshot,
        map: &ChunkMap,
        dir: &Path,
        name: SnapshotName,
        source: &RemoteRef,
        journal: &mut Vec<ImportFileRow>,
        progress: &dyn Progress,
    ) -> Result<StagedSnapshot> {
        let root = self.layout().root();
        let rel = |p: &Path| {
            p.strip_prefix(root)
                .expect("staging is under the root")
                .to_string_lossy()
                .into_owned()
        };
        let upper = &s.parsed.manifest.upper;
        let mut files = Vec::new();
        let mut chunks = Vec::new();
        let manifest_len = s.config.len() as u64;
        let listed = map.files.iter().map(|f| (f.path.as_str(), f.size, Some(f)));
        for (file_name, len, map_file) in
            std::iter::once(("manifest.json", manifest_len, None)).chain(listed)
        {
            let path = dir.join(file_name);
            let file = crate::store::files::open_regular(&path)?;
            let integrity = (file_name == upper.file)
                .then_some(upper.integrity.as_ref())
                .flatten();
            let (digest, found, list) = crate::store::stage::digest_file_chunked(
                &file, len, &path, integrity, CHUNK_SIZE, progress,
            )?;
            if let Some(integrity) = integrity {
                crate::store::stage::check_integrity(
                    &format!("{source} {file_name}"),
                    integrity,
                    found,
                )?;
            }
            if let Some(f) = map_file {
                matches_map(map, f, &list.chunks, s)?;
            }
            journal.push(ImportFileRow {
                member: format!(
                    "{}@{} {file_name}",
                    source.repository_name(),
                    s.parsed.digest
                ),
                staged_path: rel(&path),
                final_path: rel(&self.layout().snapshot_file(&name, file_name)),
                kind: "snapshot".into(),
                size: len,
                digest,
                promote: true,
            });
            files.push(SnapshotFileRow {
                path: file_name.to_string(),
                size: len,
                digest,
            });
            chunks.push((file_name.to_string(), list));
        }
        Ok(StagedSnapshot {
            parsed: s.parsed.clone(),
            name,
            staged_dir: rel(dir),
            files,
            chunks,
        })
    }

    /// Download the image cache artifacts tagged for `parsed`'s image, if
    /// the repository has them, and stage them as `add --cache-dir` does.
    #[allow(clippy::too_many_arguments)]
    async fn pull_image(
        &self,
        client: &Client,
        repo: &str,
        lease: &Lease,
        parsed: &ParsedManifest,
        report: &mut PullReport,
        journal: &mut Vec<ImportFileRow>,
        set: &mut StagedSet,
        progress: &dyn Progress,
    ) -> Result<()> {
        let tag = image_tag(&parsed.manifest.image.manifest_digest);
        let Some((bytes, _)) = client.get_manifest(repo, &tag).await? else {
            return Ok(());
        };
        let subject = crate::remote::reference::joined(client.registry(), repo, &tag);
        let manifest = OciManifest::parse(&bytes, IMAGE_CACHE_ARTIFACT, &subject)?;
        let cache_dir = lease.staging().join("pulled-cache");
        let mut seen = HashSet::new();
        for layer in &manifest.layers {
            let title = layer
                .annotations
                .get(TITLE)
                .map(String::as_str)
                .unwrap_or("");
            let file = CacheFile::parse_rel(title)
                .filter(|f| seen.insert(*f))
                .ok_or_else(|| {
                    malformed(
                        &subject,
                        format!(
                            "layer {} is not named as a cache file: {}",
                            layer.digest,
                            crate::model::text::escape(title)
                        ),
                    )
                })?;
            if layer.size > crate::archive::entry::DEFAULT_MAX_FILE_BYTES {
                return Err(malformed(
                    &subject,
                    format!("{title} claims {} bytes", layer.size),
                ));
            }
            let path = cache_dir.join(file.rel_path());
            let parent = path.parent().expect("a cache file has a kind directory");
            std::fs::create_dir_all(parent).at("create directory", parent)?;
            let out = File::create(&path).at("create", &path)?;
            let mut at = 0u64;
            report.transfer.bytes_downloaded += client
                .get_blob_into(repo, &layer.digest, layer.size, |piece| {
                    out.write_all_at(piece, at).at("write", &path)?;
                    at += piece.len() as u64;
                    Ok(())
                })
                .await?;
        }
        self.stage_cache(lease, &cache_dir, parsed, progress, journal, set)
    }
}

/// Fetch a snapshot's manifest and config by tag or digest; `None` when
/// the repository has no such manifest.
async fn fetch_snapshot(
    client: &Client,
    repo: &str,
    reference: &str,
    report: &mut Transfer,
) -> Result<Option<(RemoteSnapshot, Digest)>> {
    let Some((bytes, digest)) = client.get_manifest(repo, reference).await? else {
        return Ok(None);
    };
    let subject = crate::remote::reference::joined(client.registry(), repo, reference);
    let manifest = OciManifest::parse(&bytes, SNAPSHOT_ARTIFACT, &subject)?;
    if manifest.config.media_type != SNAPSHOT_CONFIG
        || manifest.config.size > crate::model::manifest::MAX_MANIFEST_BYTES
    {
        return Err(malformed(
            &subject,
            format!(
                "config is {} of {} bytes, not a snapshot manifest",
                crate::model::text::escape(&manifest.config.media_type),
                manifest.config.size
            ),
        ));
    }
    let config = client
        .get_blob(repo, &manifest.config.digest, manifest.config.size)
        .await?;
    report.bytes_downloaded += config.len() as u64;
    let parsed = parse_config(&config, &format!("{subject} config"))?;
    Ok(Some((
        RemoteSnapshot {
            manifest,
            config,
            parsed,
        },
        digest,
    )))
}

/// Open (or create) a staged file of `size` bytes; `true` when it is new
/// (nothing in it to resume from).
fn open_staged(path: &Path, size: u64) -> Result<(File, bool)> {
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
fn holds(file: &File, offset: u64, len: u64, chunk: &Digest) -> Result<bool> {
    let mut buf = vec![0u8; len as usize];
    Ok(file.read_exact_at(&mut buf, offset).is_ok() && Digest::of(&buf) == *chunk)
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

/// The chunk list cut from an assembled file must be its chunk map's
/// (when both are cut at the same size): nothing more, nothing less.
fn matches_map(
    map: &ChunkMap,
    f: &MapFile,
    found: &[crate::model::chunk::Chunk],
    s: &RemoteSnapshot,
) -> Result<()> {
    if map.chunk_size != CHUNK_SIZE {
        return Ok(());
    }
    let same = found.len() == f.extents.len()
        && found.iter().zip(&f.extents).all(|(c, &(offset, i))| {
            c.offset == offset && c.digest == map.chunks[i as usize].chunk()
        });
    if same {
        Ok(())
    } else {
        Err(malformed(
            &format!("chunk map of {}", s.parsed.digest),
            format!(
                "file {} assembled from it has {} data chunks; the map lists {} (a listed chunk of zeros, or a missing one)",
                crate::model::text::escape(&f.path),
                found.len(),
                f.extents.len()
            ),
        ))
    }
}

/// Whether a failed pull's downloads are worth keeping for a rerun.
fn resumable(e: &Error) -> bool {
    matches!(
        e,
        Error::Remote { .. }
            | Error::RemoteAuth { .. }
            | Error::Failpoint(_)
            | Error::Interrupted { .. }
    ) || e.is_storage()
}
