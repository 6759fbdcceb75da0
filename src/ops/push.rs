//! `push`: a snapshot (and with `--with-parents` its ancestors) into an OCI
//! registry, sending only the blobs the repository lacks (README "Push and
//! pull"). Blobs first, in parallel; then each snapshot's manifest by
//! digest; tags last, so no tag ever names a half-pushed snapshot.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::db::remote::PackedChunk;
use crate::db::{self, SnapshotRow};
use crate::model::chunk::ChunkList;
use crate::model::digest::Digest;
use crate::model::error::{Error, IoContext, Result};
use crate::model::image::CacheFile;
use crate::model::manifest::MAX_MANIFEST_BYTES;
use crate::ops::registry::Registry;
use crate::process::progress::Progress;
use crate::remote::format::{
    CHUNK_MAP, CREATED, ChunkMap, Descriptor, EMPTY_CONFIG, IMAGE_CACHE_ARTIFACT, IMAGE_CACHE_FILE,
    MAX_CHUNK_MAP_BYTES, MAX_OCI_MANIFEST_BYTES, MapChunk, MapFile, OCI_MANIFEST, OciManifest,
    PACK, SNAPSHOT_ARTIFACT, SNAPSHOT_CONFIG, SNAPSHOT_DIGEST, SNAPSHOT_PARENT, TITLE,
    parse_config,
};
use crate::remote::reference::{image_tag, is_valid_tag, snapshot_tag};
use crate::remote::{Access, Client, ClientOptions, RemoteRef};
use crate::store::files::open_regular;
use crate::store::layout::SnapshotName;

/// zstd level of chunk frames: the level `tar | zstd` uses by default.
pub const CHUNK_ZSTD_LEVEL: i32 = 3;
/// Blob transfers in flight by default.
pub const DEFAULT_JOBS: usize = 8;

/// How to push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Push the ancestors too (each one the repository lacks).
    pub with_parents: bool,
    /// Push the pinned image's cache artifacts too.
    pub with_image: bool,
    /// Blob transfers in flight (0: the default).
    pub jobs: usize,
    /// How to reach the registry.
    pub client: ClientOptions,
}

/// One snapshot a push stored.
#[derive(Debug, Clone, Serialize)]
pub struct PushedSnapshot {
    /// The snapshot digest (= the config blob's digest).
    pub digest: Digest,
    /// Its local name.
    pub name: String,
    /// Digest of its OCI manifest.
    pub manifest_digest: Digest,
    /// The tags set on it.
    pub tags: Vec<String>,
}

/// The image cache artifacts a push stored.
#[derive(Debug, Clone, Serialize)]
pub struct PushedImage {
    /// Digest of the image-cache manifest.
    pub manifest_digest: Digest,
    /// Its tag.
    pub tag: String,
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// `host/repository`.
    pub repository: String,
    /// The tag set on the head snapshot.
    pub tag: String,
    /// Every snapshot pushed, parents first.
    pub snapshots: Vec<PushedSnapshot>,
    /// Blobs uploaded.
    pub blobs_uploaded: u64,
    /// Bytes of blob bodies uploaded.
    pub bytes_uploaded: u64,
    /// Blobs the repository already held (recorded, or found by HEAD).
    pub blobs_present: u64,
    /// Bytes of those blobs.
    pub bytes_present: u64,
    /// Blobs mounted from another repository of the same registry.
    pub blobs_mounted: u64,
    /// Chunks sent in new packs.
    pub chunks_uploaded: u64,
    /// Chunks the repository already held (recorded, or learnt from the parent's chunk map there).
    pub chunks_present: u64,
    /// The image cache artifacts, with `--with-image`.
    pub image: Option<PushedImage>,
    /// Things the user should know (a parent the repository lacks).
    pub warnings: Vec<String>,
}

/// The chunks of a pack, at most: 4 MiB of data at the 128 KiB chunk
/// size. Small enough to hold `--jobs` of them in memory, large enough
/// that a registry's per-blob cost does not dominate.
pub const PACK_CHUNKS: usize = 32;

/// Where a chunk's bytes are: file, offset, length.
type ChunkSource = (std::sync::Arc<PathBuf>, u64, u64);

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
struct Unplaced {
    chunk: Digest,
    source: ChunkSource,
    base: Option<(Digest, ChunkSource)>,
}

/// What a repository is known to hold, by chunk.
type Held = HashMap<Digest, PackedChunk>;

/// Where the repository holds `chunk`, when it can be decoded there: a
/// plain frame, or a delta whose base it holds as a plain frame.
fn placed(held: &Held, chunk: &Digest) -> Option<PackedChunk> {
    let at = *held.get(chunk)?;
    match at.base {
        Some(base) if held.get(&base).is_none_or(|b| b.base.is_some()) => None,
        _ => Some(at),
    }
}

/// A snapshot's files as its chunk map lists them.
struct MapFiles {
    chunk_size: u64,
    files: Vec<MapFile>,
}

/// What storing one blob came to.
enum Stored {
    Present,
    Uploaded,
    Mounted,
}

#[derive(Default)]
struct Counts {
    uploaded: u64,
    bytes_uploaded: u64,
    present: u64,
    bytes_present: u64,
    mounted: u64,
    chunks_uploaded: u64,
    chunks_present: u64,
}

impl Counts {
    fn add(&mut self, stored: &Stored, size: u64) {
        match stored {
            Stored::Present => {
                self.present += 1;
                self.bytes_present += size;
            }
            Stored::Uploaded => {
                self.uploaded += 1;
                self.bytes_uploaded += size;
            }
            Stored::Mounted => self.mounted += 1,
        }
    }
}

impl Registry {
    /// Push snapshot `reference` to `target`.
    pub fn push(
        &mut self,
        reference: &str,
        target: &RemoteRef,
        opts: &PushOptions,
        progress: &dyn Progress,
    ) -> Result<PushReport> {
        if target.digest.is_some() {
            return Err(Error::Usage(format!(
                "{target}: push takes a tag (REPOSITORY[:TAG]), not a digest"
            )));
        }
        let head = self.resolve(reference)?;
        let tag = match &target.tag {
            Some(t) => t.clone(),
            None if is_valid_tag(&head.name) => head.name.clone(),
            None => {
                return Err(Error::Usage(format!(
                    "snapshot name {} is not a valid tag; give one: {}:TAG",
                    crate::model::text::escape(&head.name),
                    target.repository_name()
                )));
            }
        };
        let chain = self.push_chain(&head, opts.with_parents)?;
        let client = Client::new(&target.registry, &opts.client)?;
        // What push writes is a cache of what the registry holds: losing
        // its last commits to a power cut costs only a HEAD or a resend.
        self.db().relax_durability()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .at("start", "the async runtime")?;
        let first =
            runtime.block_on(self.push_async(&client, target, &tag, &chain, opts, progress));
        match first {
            // The registry lost blobs we recorded (its garbage collection
            // ran): forget what we knew of the repository, and push again.
            Err(Error::Remote { detail, .. }) if detail.contains("BLOB_UNKNOWN") => {
                db::remote::forget_remote(self.db().conn(), &target.registry, &target.repository)?;
                runtime.block_on(self.push_async(&client, target, &tag, &chain, opts, progress))
            }
            other => other,
        }
    }

    /// The snapshots to push, parents first.
    fn push_chain(&self, head: &SnapshotRow, with_parents: bool) -> Result<Vec<SnapshotRow>> {
        if !with_parents {
            return Ok(vec![head.clone()]);
        }
        let conn = self.db().conn();
        let mut chain = Vec::new();
        for row in db::snapshots::ancestors(conn, &head.digest)? {
            match db::snapshots::snapshot_by_digest(conn, &row.digest)? {
                Some(s) => chain.push(s),
                None => {
                    return Err(Error::MissingParent {
                        parent: row.digest,
                        child: chain
                            .last()
                            .map(|s: &SnapshotRow| s.digest)
                            .unwrap_or(head.digest),
                    });
                }
            }
        }
        Ok(chain)
    }

    async fn push_async(
        &self,
        client: &Client,
        target: &RemoteRef,
        tag: &str,
        chain: &[SnapshotRow],
        opts: &PushOptions,
        progress: &dyn Progress,
    ) -> Result<PushReport> {
        let repo = target.repository.as_str();
        client.ping(repo, Access::Push).await?;
        let jobs = if opts.jobs == 0 {
            DEFAULT_JOBS
        } else {
            opts.jobs
        };
        let mut counts = Counts::default();
        let mut warnings = Vec::new();
        if let Some(parent) = chain[0].parent
            && client
                .head_manifest(repo, &snapshot_tag(&parent))
                .await?
                .is_none()
        {
            warnings.push(format!(
                "parent {parent} of {} is not in {}; a pull elsewhere needs it there (push --with-parents) or locally",
                chain[0].name,
                target.repository_name()
            ));
        }
        let image = if opts.with_image {
            Some(
                self.push_image(client, target, &chain[chain.len() - 1], jobs, &mut counts)
                    .await?,
            )
        } else {
            None
        };
        let total: u64 = chain
            .iter()
            .map(|s| self.data_bytes(s))
            .sum::<Result<u64>>()?;
        progress.start("push", Some(total));
        let mut manifests: Vec<(Bytes, Digest)> = Vec::new();
        let mut previous: Option<(Digest, Descriptor)> = None;
        for snapshot in chain {
            let manifest = self
                .push_snapshot(
                    client,
                    target,
                    snapshot,
                    previous.as_ref(),
                    jobs,
                    &mut counts,
                    progress,
                )
                .await?;
            let digest = Digest::of(&manifest);
            previous = Some((
                snapshot.digest,
                Descriptor {
                    media_type: OCI_MANIFEST.into(),
                    digest,
                    size: manifest.len() as u64,
                    annotations: BTreeMap::new(),
                },
            ));
            manifests.push((manifest, digest));
        }
        progress.finish();
        crate::process::failpoint::hit(crate::process::failpoint::PUSH_MANIFESTS_STORED)?;
        let mut pushed = Vec::new();
        for (snapshot, (bytes, digest)) in chain.iter().zip(&manifests) {
            let mut tags = vec![snapshot_tag(&snapshot.digest)];
            if snapshot.digest == chain[chain.len() - 1].digest && !tags.iter().any(|t| t == tag) {
                tags.push(tag.to_string());
            }
            for t in &tags {
                client.put_manifest(repo, t, bytes.clone()).await?;
            }
            pushed.push(PushedSnapshot {
                digest: snapshot.digest,
                name: snapshot.name.clone(),
                manifest_digest: *digest,
                tags,
            });
        }
        Ok(PushReport {
            repository: target.repository_name(),
            tag: tag.to_string(),
            snapshots: pushed,
            blobs_uploaded: counts.uploaded,
            bytes_uploaded: counts.bytes_uploaded,
            blobs_present: counts.present,
            bytes_present: counts.bytes_present,
            blobs_mounted: counts.mounted,
            chunks_uploaded: counts.chunks_uploaded,
            chunks_present: counts.chunks_present,
            image,
            warnings,
        })
    }

    fn data_bytes(&self, s: &SnapshotRow) -> Result<u64> {
        let conn = self.db().conn();
        let mut total = 0;
        for f in db::snapshots::snapshot_files(conn, &s.digest)? {
            if let Some(list) = db::chunks::chunk_list(conn, &s.digest, &f.path)? {
                total += list.data_bytes();
            }
        }
        Ok(total)
    }

    /// Store one snapshot's packs, chunk map, config and manifest (by
    /// digest); returns the manifest's bytes.
    #[allow(clippy::too_many_arguments)]
    async fn push_snapshot(
        &self,
        client: &Client,
        target: &RemoteRef,
        snapshot: &SnapshotRow,
        parent: Option<&(Digest, Descriptor)>,
        jobs: usize,
        counts: &mut Counts,
        progress: &dyn Progress,
    ) -> Result<Bytes> {
        let (registry, repo) = (target.registry.as_str(), target.repository.as_str());
        let name = SnapshotName::chosen(&snapshot.name)?;
        let config = self.read_config(snapshot, &name)?;
        let (files, order, places) = self.cut_files(snapshot, &name)?;
        let chunk_size = files.chunk_size;
        let held = db::remote::remote_chunks_of(self.db().conn(), registry, repo)?;
        if let Some(p) = snapshot.parent
            && parent.is_none_or(|(d, _)| *d != p)
            && order.iter().any(|c| placed(&held, c).is_none())
        {
            // Another machine may have pushed the parent: its chunk map
            // says where the repository holds the chunks they share.
            self.learn_from(client, target, &p).await?;
        }
        let held = db::remote::remote_chunks_of(self.db().conn(), registry, repo)?;
        if order.iter().any(|c| placed(&held, c).is_none()) {
            self.mount_packs(client, target, &order, &held, counts)
                .await?;
        }
        let held = db::remote::remote_chunks_of(self.db().conn(), registry, repo)?;
        let parent_chunks = self.parent_chunks(snapshot)?;
        let conn = self.db().conn();
        let mut unplaced = Vec::new();
        for (i, chunk) in order.iter().enumerate() {
            if placed(&held, chunk).is_some() {
                counts.chunks_present += 1;
                progress.advance(places[i].2);
                continue;
            }
            let (path, offset, _) = &places[i];
            let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let base = match parent_chunks.get(&(file.to_string(), *offset)) {
                Some(r) if r != chunk => self.delta_base(&held, r)?,
                _ => None,
            };
            unplaced.push(Unplaced {
                chunk: *chunk,
                source: places[i].clone(),
                base,
            });
        }
        self.store_packs(client, target, unplaced, jobs, counts, progress)
            .await?;
        let held = db::remote::remote_chunks_of(conn, registry, repo)?;

        let mut packs: Vec<Digest> = Vec::new();
        let mut pack_index: HashMap<Digest, u32> = HashMap::new();
        let mut chunk_index: HashMap<Digest, u32> = HashMap::new();
        let mut chunks = Vec::with_capacity(order.len());
        let mut deltas = Vec::new();
        let mut pending: Vec<Digest> = order.clone();
        let mut next = 0;
        while next < pending.len() {
            let chunk = pending[next];
            next += 1;
            if chunk_index.contains_key(&chunk) {
                continue;
            }
            let at = placed(&held, &chunk).ok_or_else(|| Error::Remote {
                registry: registry.to_string(),
                detail: format!("chunk {chunk} was stored but is not recorded; push again"),
            })?;
            let i = *pack_index.entry(at.pack).or_insert_with(|| {
                packs.push(at.pack);
                (packs.len() - 1) as u32
            });
            chunk_index.insert(chunk, chunks.len() as u32);
            chunks.push(MapChunk(chunk, i, at.offset, at.length));
            if let Some(base) = at.base {
                deltas.push((chunk, base));
                pending.push(base);
            }
        }
        let deltas = deltas
            .into_iter()
            .map(|(c, b)| (chunk_index[&c], chunk_index[&b]))
            .collect();
        let mut layers = Vec::with_capacity(packs.len() + 1);
        let map = ChunkMap {
            schema: 1,
            snapshot: snapshot.digest,
            chunk_size,
            compression: "zstd".into(),
            packs,
            chunks,
            files: files.files,
            deltas,
        };
        let map_bytes = Bytes::from(map.to_bytes());
        let map_desc = Descriptor::of(CHUNK_MAP, &map_bytes);
        let config_desc = Descriptor::of(SNAPSHOT_CONFIG, &config);
        layers.push(map_desc.clone());
        for pack in &map.packs {
            let size = match db::remote::remote_blob_size(conn, registry, repo, pack)? {
                Some(size) => size,
                None => client
                    .head_blob(repo, pack)
                    .await?
                    .ok_or_else(|| Error::Remote {
                        registry: registry.to_string(),
                        detail: format!(
                            "pack {pack} is recorded but the repository lacks it: BLOB_UNKNOWN"
                        ),
                    })?,
            };
            layers.push(Descriptor {
                media_type: PACK.into(),
                digest: *pack,
                size,
                annotations: BTreeMap::new(),
            });
        }
        for (desc, body) in [
            (map_desc, map_bytes),
            (config_desc.clone(), Bytes::from(config)),
        ] {
            self.store_blob(client, target, &desc, body, counts).await?;
        }

        let mut annotations = BTreeMap::new();
        annotations.insert(TITLE.to_string(), snapshot.name.clone());
        annotations.insert(CREATED.to_string(), snapshot.created_at.clone());
        annotations.insert(SNAPSHOT_DIGEST.to_string(), snapshot.digest.to_string());
        let mut subject = None;
        if let Some(p) = snapshot.parent {
            annotations.insert(SNAPSHOT_PARENT.to_string(), p.to_string());
            subject = match parent {
                Some((digest, desc)) if *digest == p => Some(desc.clone()),
                _ => client
                    .head_manifest(repo, &snapshot_tag(&p))
                    .await?
                    .and_then(|found| {
                        Some(Descriptor {
                            media_type: OCI_MANIFEST.into(),
                            digest: found.digest?,
                            size: found.size,
                            annotations: BTreeMap::new(),
                        })
                    }),
            };
        }
        let manifest = OciManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.into(),
            artifact_type: Some(SNAPSHOT_ARTIFACT.into()),
            config: config_desc,
            layers,
            subject,
            annotations,
        };
        let bytes = Bytes::from(manifest.to_bytes());
        if bytes.len() as u64 > MAX_OCI_MANIFEST_BYTES {
            return Err(Error::Usage(format!(
                "snapshot {} spans {} packs; its manifest would be {} bytes, over the {MAX_OCI_MANIFEST_BYTES} bytes registries accept",
                snapshot.name,
                map.packs.len(),
                bytes.len()
            )));
        }
        let digest = Digest::of(&bytes);
        client
            .put_manifest(repo, &digest.to_string(), bytes.clone())
            .await?;
        Ok(bytes)
    }

    /// The chunk map's files of `snapshot` (every file but manifest.json),
    /// its distinct chunks in order of first use, and where each is.
    fn cut_files(
        &self,
        snapshot: &SnapshotRow,
        name: &SnapshotName,
    ) -> Result<(MapFiles, Vec<Digest>, Vec<ChunkSource>)> {
        let conn = self.db().conn();
        let mut files = MapFiles {
            chunk_size: crate::model::chunk::CHUNK_SIZE,
            files: Vec::new(),
        };
        let mut index_of: HashMap<Digest, u32> = HashMap::new();
        let mut order = Vec::new();
        let mut places = Vec::new();
        for f in db::snapshots::snapshot_files(conn, &snapshot.digest)? {
            if f.path == "manifest.json" {
                continue;
            }
            let path = std::sync::Arc::new(self.layout().snapshot_file(name, &f.path));
            let list = self.chunk_list_of(snapshot, &f.path, &path, f.size)?;
            files.chunk_size = list.chunk_size;
            let mut extents = Vec::with_capacity(list.chunks.len());
            for c in &list.chunks {
                let index = *index_of.entry(c.digest).or_insert_with(|| {
                    order.push(c.digest);
                    places.push((path.clone(), c.offset, c.length));
                    (order.len() - 1) as u32
                });
                extents.push((c.offset, index));
            }
            files.files.push(MapFile {
                path: f.path.clone(),
                size: f.size,
                extents,
            });
        }
        Ok((files, order, places))
    }

    /// The chunks of the parent's files by (file, offset), when the parent
    /// is here: a changed chunk is sent as a delta against the parent's
    /// chunk at the same offset.
    fn parent_chunks(&self, snapshot: &SnapshotRow) -> Result<HashMap<(String, u64), Digest>> {
        let conn = self.db().conn();
        let mut out = HashMap::new();
        let Some(parent) = snapshot.parent else {
            return Ok(out);
        };
        if db::snapshots::snapshot_by_digest(conn, &parent)?.is_none() {
            return Ok(out);
        }
        for f in db::snapshots::snapshot_files(conn, &parent)? {
            if let Some(list) = db::chunks::chunk_list(conn, &parent, &f.path)? {
                for c in list.chunks {
                    out.insert((f.path.clone(), c.offset), c.digest);
                }
            }
        }
        Ok(out)
    }

    /// The base for a delta against chunk `reference`: a plain chunk the
    /// repository holds (the reference, or the base it is itself a delta
    /// of) that is readable here.
    fn delta_base(&self, held: &Held, reference: &Digest) -> Result<Option<(Digest, ChunkSource)>> {
        let conn = self.db().conn();
        let Some(at) = placed(held, reference) else {
            return Ok(None);
        };
        let base = at.base.unwrap_or(*reference);
        let Some(place) = db::remote::chunk_place(conn, &base)? else {
            return Ok(None);
        };
        let Some(length) = db::chunks::chunk_length(conn, &base)? else {
            return Ok(None);
        };
        let name = SnapshotName::chosen(&place.name)?;
        let path = std::sync::Arc::new(self.layout().snapshot_file(&name, &place.path));
        Ok(Some((base, (path, place.offset, length))))
    }

    /// Mount into the repository the packs other repositories of the
    /// registry hold the chunks in that it lacks (where the registry
    /// supports cross-repository mounts), and record what they hold.
    async fn mount_packs(
        &self,
        client: &Client,
        target: &RemoteRef,
        chunks: &[Digest],
        held: &Held,
        counts: &mut Counts,
    ) -> Result<()> {
        let (registry, repo) = (target.registry.as_str(), target.repository.as_str());
        let conn = self.db().conn();
        let mut tried = std::collections::HashSet::new();
        for chunk in chunks {
            if held.contains_key(chunk) {
                continue;
            }
            let Some((from, at)) = db::remote::remote_chunk_elsewhere(conn, registry, repo, chunk)?
            else {
                continue;
            };
            if !tried.insert(at.pack) {
                continue;
            }
            if client.mount_blob(repo, &at.pack, &from).await? {
                db::remote::copy_pack_holdings(conn, registry, &from, repo, &at.pack)?;
                counts.mounted += 1;
            }
        }
        Ok(())
    }

    /// Record where the repository holds the chunks of snapshot `digest`,
    /// from its chunk map there (if it is there).
    async fn learn_from(&self, client: &Client, target: &RemoteRef, digest: &Digest) -> Result<()> {
        let repo = target.repository.as_str();
        let Some((bytes, _)) = client.get_manifest(repo, &snapshot_tag(digest)).await? else {
            return Ok(());
        };
        let subject = format!("{}:{}", target.repository_name(), snapshot_tag(digest));
        let manifest = OciManifest::parse(&bytes, SNAPSHOT_ARTIFACT, &subject)?;
        let Some((first, packs)) = manifest.layers.split_first() else {
            return Ok(());
        };
        if first.media_type != CHUNK_MAP || first.size > MAX_CHUNK_MAP_BYTES {
            return Ok(());
        }
        let config = client
            .get_blob(
                repo,
                &manifest.config.digest,
                manifest.config.size.min(MAX_MANIFEST_BYTES),
            )
            .await?;
        let parsed = parse_config(&config, &subject)?;
        let map_bytes = client.get_blob(repo, &first.digest, first.size).await?;
        let map = ChunkMap::parse(&map_bytes, &parsed, packs, u64::MAX)?;
        let sizes = map.pack_sizes(packs);
        crate::remote::holdings::record_map(self.db().conn(), &target.registry, repo, &map, &sizes)
    }

    /// Pack `unplaced` chunks (in order, [`PACK_CHUNKS`] a pack), compress
    /// them on the blocking pool, and store each pack the repository
    /// lacks, `jobs` at a time; each stored pack is recorded (blob and
    /// chunk places) in its own transaction as it lands.
    async fn store_packs(
        &self,
        client: &Client,
        target: &RemoteRef,
        unplaced: Vec<Unplaced>,
        jobs: usize,
        counts: &mut Counts,
        progress: &dyn Progress,
    ) -> Result<()> {
        let (registry, repo) = (target.registry.as_str(), target.repository.as_str());
        let batches: Vec<Vec<Unplaced>> = unplaced.chunks(PACK_CHUNKS).map(<[_]>::to_vec).collect();
        let conn = self.db().conn();
        let mut results = stream::iter(batches.into_iter().map(|batch| async move {
            let logical: u64 = batch.iter().map(|u| u.source.2).sum();
            let (body, frames) = tokio::task::spawn_blocking(move || build_pack(&batch))
                .await
                .map_err(|e| Error::io("compress", "a pack", std::io::Error::other(e)))??;
            let desc = Descriptor::of(PACK, &body);
            let stored = store_one(conn, client, registry, repo, &desc, Body::Memory(body)).await?;
            Ok::<_, Error>((desc, stored, frames, logical))
        }))
        .buffer_unordered(jobs);
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
        Ok(())
    }

    /// Store one blob held in memory unless the repository holds it.
    async fn store_blob(
        &self,
        client: &Client,
        target: &RemoteRef,
        desc: &Descriptor,
        body: Bytes,
        counts: &mut Counts,
    ) -> Result<()> {
        let (registry, repo) = (target.registry.as_str(), target.repository.as_str());
        let conn = self.db().conn();
        let stored = store_one(conn, client, registry, repo, desc, Body::Memory(body)).await?;
        counts.add(&stored, desc.size);
        db::remote::record_remote(conn, registry, repo, &desc.digest, desc.size)?;
        crate::process::failpoint::hit(crate::process::failpoint::PUSH_BLOB_STORED)?;
        Ok(())
    }

    /// The canonical manifest bytes of `snapshot`, checked against its digest.
    fn read_config(&self, snapshot: &SnapshotRow, name: &SnapshotName) -> Result<Vec<u8>> {
        let path = self.layout().snapshot_file(name, "manifest.json");
        let bytes =
            crate::store::files::read_limited(&path, crate::model::manifest::MAX_MANIFEST_BYTES)?
                .ok_or_else(|| {
                Error::integrity(path.display().to_string(), "larger than a manifest may be")
            })?;
        let parsed =
            crate::model::manifest::Manifest::parse(&bytes).map_err(|source| Error::Manifest {
                path: path.display().to_string(),
                source,
            })?;
        if parsed.digest != snapshot.digest {
            return Err(Error::integrity(
                path.display().to_string(),
                format!(
                    "hashes to {}, not {}; run `msb-registry verify`",
                    parsed.digest, snapshot.digest
                ),
            ));
        }
        Ok(parsed.manifest.canonical_bytes())
    }

    /// The recorded chunk list of a file, or one cut now for a snapshot
    /// that entered the registry before the chunk index.
    fn chunk_list_of(
        &self,
        s: &SnapshotRow,
        file: &str,
        path: &std::path::Path,
        len: u64,
    ) -> Result<ChunkList> {
        if let Some(list) = db::chunks::chunk_list(self.db().conn(), &s.digest, file)? {
            return Ok(list);
        }
        let f = open_regular(path)?;
        let (_, _, list) = crate::store::stage::digest_file_chunked(
            &f,
            len,
            path,
            None,
            crate::model::chunk::CHUNK_SIZE,
            &crate::process::progress::NoProgress,
        )?;
        Ok(list)
    }

    /// Store the cache artifacts of `snapshot`'s image as one manifest.
    async fn push_image(
        &self,
        client: &Client,
        target: &RemoteRef,
        snapshot: &SnapshotRow,
        jobs: usize,
        counts: &mut Counts,
    ) -> Result<PushedImage> {
        let conn = self.db().conn();
        let image = db::images::image_by_digest(conn, &snapshot.image_manifest_digest)?.ok_or_else(|| {
            Error::NotFound {
                what: "image",
                reference: format!(
                    "{} ({}) pinned by {}: its cache artifacts are not in the registry; push without --with-image",
                    snapshot.image_ref, snapshot.image_manifest_digest, snapshot.name
                ),
            }
        })?;
        let mut files = Vec::new();
        let mut layers = Vec::new();
        for (file, row) in db::images::image_cache_files(conn, &image)? {
            if row.is_none() {
                return Err(Error::NotFound {
                    what: "cache file",
                    reference: format!(
                        "cache/{} of image {}",
                        file.rel_path(),
                        image.manifest_digest
                    ),
                });
            }
            let path = self.layout().cache_file(&file);
            let desc = file_descriptor(&path, &file)?;
            layers.push(desc.clone());
            files.push((desc, path));
        }
        let (registry, repo) = (target.registry.as_str(), target.repository.as_str());
        let mut results = stream::iter(files.into_iter().map(|(desc, path)| async move {
            let stored = store_one(conn, client, registry, repo, &desc, Body::File(&path)).await?;
            Ok::<_, Error>((stored, desc))
        }))
        .buffer_unordered(jobs);
        while let Some(done) = results.next().await {
            let (stored, desc) = done?;
            counts.add(&stored, desc.size);
            db::remote::record_remote(conn, registry, repo, &desc.digest, desc.size)?;
            crate::process::failpoint::hit(crate::process::failpoint::PUSH_BLOB_STORED)?;
        }
        drop(results);
        let empty = Bytes::from_static(b"{}");
        let config = Descriptor::of(EMPTY_CONFIG, &empty);
        self.store_blob(client, target, &config, empty, counts)
            .await?;
        let mut annotations = BTreeMap::new();
        annotations.insert(TITLE.to_string(), snapshot.image_ref.clone());
        let manifest = OciManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.into(),
            artifact_type: Some(IMAGE_CACHE_ARTIFACT.into()),
            config,
            layers,
            subject: None,
            annotations,
        };
        let bytes = Bytes::from(manifest.to_bytes());
        let digest = Digest::of(&bytes);
        let tag = image_tag(&image.manifest_digest);
        client.put_manifest(&target.repository, &tag, bytes).await?;
        Ok(PushedImage {
            manifest_digest: digest,
            tag,
        })
    }
}

/// A cache file's layer descriptor: its plain SHA-256, one read.
fn file_descriptor(path: &std::path::Path, file: &CacheFile) -> Result<Descriptor> {
    use sha2::Digest as _;
    let f = open_regular(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = f.read_at(&mut buf, offset).at("read", path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    let mut annotations = BTreeMap::new();
    annotations.insert(TITLE.to_string(), file.rel_path());
    Ok(Descriptor {
        media_type: IMAGE_CACHE_FILE.into(),
        digest: Digest::from_bytes(hasher.finalize().into()),
        size: offset,
        annotations,
    })
}

/// What a blob's body comes from.
enum Body<'a> {
    Memory(Bytes),
    File(&'a std::path::Path),
}

/// Store one blob unless the repository holds it (recorded, or found by
/// a HEAD); mounted from another repository of the registry when one is
/// known to hold it; else uploaded, a file streamed from disk.
async fn store_one(
    conn: &rusqlite::Connection,
    client: &Client,
    registry: &str,
    repo: &str,
    desc: &Descriptor,
    body: Body<'_>,
) -> Result<Stored> {
    if db::remote::remote_has(conn, registry, repo, &desc.digest)?
        || client.head_blob(repo, &desc.digest).await?.is_some()
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
/// base's bytes as its prefix when that makes it smaller. Returns the pack
/// and each chunk's frame.
fn build_pack(batch: &[Unplaced]) -> Result<(Bytes, Vec<Frame>)> {
    let data: u64 = batch.iter().map(|u| u.source.2).sum();
    let mut pack = Vec::with_capacity(
        (data + batch.len() as u64 * crate::remote::format::max_chunk_frame(0)) as usize
            + data as usize / 128,
    );
    let mut frames = Vec::with_capacity(batch.len());
    let mut compressor =
        zstd::bulk::Compressor::new(CHUNK_ZSTD_LEVEL).map_err(|e| Error::io("start", "zstd", e))?;
    for u in batch {
        let bytes = read_chunk(&u.chunk, &u.source)?;
        let plain = compressor
            .compress(&bytes)
            .map_err(|e| Error::io("compress", u.source.0.as_path(), e))?;
        let mut frame = (plain, None);
        if let Some((base, source)) = &u.base
            && let Ok(reference) = read_chunk(base, source)
        {
            let delta = delta_frame(&bytes, &reference)
                .map_err(|e| Error::io("compress", u.source.0.as_path(), e))?;
            if delta.len() < frame.0.len() {
                frame = (delta, Some(*base));
            }
        }
        frames.push(Frame {
            chunk: u.chunk,
            offset: pack.len() as u64,
            length: frame.0.len() as u64,
            base: frame.1,
        });
        pack.extend_from_slice(&frame.0);
    }
    Ok((Bytes::from(pack), frames))
}

/// zstd of `bytes` with `reference` as its prefix (`zstd --patch-from`).
fn delta_frame(bytes: &[u8], reference: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder =
        zstd::stream::write::Encoder::with_ref_prefix(&mut out, CHUNK_ZSTD_LEVEL, reference)?;
    encoder.include_contentsize(true)?;
    encoder.set_pledged_src_size(Some(bytes.len() as u64))?;
    std::io::Write::write_all(&mut encoder, bytes)?;
    encoder.finish()?;
    Ok(out)
}

/// The bytes of `chunk` at its source, checked against its digest.
fn read_chunk(chunk: &Digest, (path, offset, len): &ChunkSource) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; *len as usize];
    let file = crate::store::files::open_regular(path.as_path())?;
    file.read_exact_at(&mut buf, *offset)
        .at("read", path.as_path())?;
    let found = Digest::of(&buf);
    if found != *chunk {
        return Err(Error::integrity(
            path.display().to_string(),
            format!(
                "the {len} bytes at offset {offset} hash to {found}, not the indexed chunk {chunk}; run `msb-registry verify --content`"
            ),
        ));
    }
    Ok(buf)
}
