//! `push`: a snapshot (and with `--with-parents` its ancestors) into an OCI
//! registry, sending only the blobs the repository lacks (README "Push and
//! pull"). Blobs first, in parallel; then each snapshot's manifest by
//! digest; tags last, so no tag ever names a half-pushed snapshot.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::chunk::ChunkList;
use crate::db::remote::ChunkBlob;
use crate::db::{self, SnapshotRow};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::files::open_regular;
use crate::image::CacheFile;
use crate::layout::SnapshotName;
use crate::progress::Progress;
use crate::registry::Registry;
use crate::remote::format::{
    CHUNK_BLOB, CHUNK_MAP, CREATED, ChunkMap, Descriptor, EMPTY_CONFIG, IMAGE_CACHE_ARTIFACT,
    IMAGE_CACHE_FILE, MAX_OCI_MANIFEST_BYTES, MapChunk, MapFile, OCI_MANIFEST, OciManifest,
    SNAPSHOT_ARTIFACT, SNAPSHOT_CONFIG, SNAPSHOT_DIGEST, SNAPSHOT_PARENT, TITLE,
};
use crate::remote::reference::{image_tag, is_valid_tag, snapshot_tag};
use crate::remote::{Access, Client, ClientOptions, RemoteRef};

/// zstd level of chunk blobs: the level `tar | zstd` uses by default.
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
    /// The image cache artifacts, with `--with-image`.
    pub image: Option<PushedImage>,
    /// Things the user should know (a parent the repository lacks).
    pub warnings: Vec<String>,
}

/// A blob to store: where its bytes come from.
enum Source {
    /// A chunk of a snapshot file, compressed on the way.
    Chunk {
        chunk: Digest,
        path: PathBuf,
        offset: u64,
        len: u64,
        known: Option<ChunkBlob>,
    },
    /// Bytes in memory (chunk map, config).
    Bytes(Descriptor, Bytes),
    /// A whole file (an image cache artifact), streamed.
    File(Descriptor, PathBuf),
}

/// What storing one blob came to.
enum Stored {
    Present(Digest, u64),
    Uploaded(Digest, u64),
    Mounted(Digest, u64),
}

/// A blob the repository now holds (digest, size), and for a chunk its blob.
type Holding = (Digest, u64, Option<(Digest, ChunkBlob)>);

#[derive(Default)]
struct Counts {
    uploaded: u64,
    bytes_uploaded: u64,
    present: u64,
    bytes_present: u64,
    mounted: u64,
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
                    crate::text::escape(&head.name),
                    target.repository_name()
                )));
            }
        };
        let chain = self.push_chain(&head, opts.with_parents)?;
        let client = Client::new(&target.registry, &opts.client)?;
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
        crate::failpoint::hit(crate::failpoint::PUSH_MANIFESTS_STORED)?;
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

    /// Store one snapshot's blobs and its manifest (by digest); returns the
    /// manifest's bytes.
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
        let conn = self.db().conn();
        let name = SnapshotName::chosen(&snapshot.name)?;
        let config = self.read_config(snapshot, &name)?;
        let mut files = Vec::new();
        let mut sources = Vec::new();
        let mut index_of: HashMap<Digest, u32> = HashMap::new();
        let mut order: Vec<Digest> = Vec::new();
        let mut chunk_size = crate::chunk::CHUNK_SIZE;
        for f in db::snapshots::snapshot_files(conn, &snapshot.digest)? {
            if f.path == "manifest.json" {
                continue;
            }
            let path = self.layout().snapshot_file(&name, &f.path);
            let list = self.chunk_list_of(snapshot, &f.path, &path, f.size)?;
            chunk_size = list.chunk_size;
            let mut extents = Vec::with_capacity(list.chunks.len());
            for c in &list.chunks {
                let index = match index_of.get(&c.digest) {
                    Some(&i) => i,
                    None => {
                        let i = order.len() as u32;
                        index_of.insert(c.digest, i);
                        order.push(c.digest);
                        sources.push(Source::Chunk {
                            chunk: c.digest,
                            path: path.clone(),
                            offset: c.offset,
                            len: c.length,
                            known: db::remote::chunk_blob(conn, &c.digest)?,
                        });
                        i
                    }
                };
                extents.push((c.offset, index));
            }
            files.push(MapFile {
                path: f.path.clone(),
                size: f.size,
                extents,
            });
        }
        let stored = self
            .store_blobs(client, target, sources, jobs, counts, progress)
            .await?;
        let blob_of: HashMap<Digest, ChunkBlob> = stored.into_iter().collect();
        let chunks: Vec<MapChunk> = order
            .iter()
            .map(|c| {
                let b = blob_of[c];
                MapChunk(*c, b.blob, b.size)
            })
            .collect();
        let map = ChunkMap {
            schema: 1,
            snapshot: snapshot.digest,
            chunk_size,
            compression: "zstd".into(),
            chunks,
            files,
        };
        let map_bytes = Bytes::from(map.to_bytes());
        let map_desc = Descriptor::of(CHUNK_MAP, &map_bytes);
        let config_desc = Descriptor::of(SNAPSHOT_CONFIG, &config);
        let small = vec![
            Source::Bytes(map_desc.clone(), map_bytes),
            Source::Bytes(config_desc.clone(), Bytes::from(config)),
        ];
        self.store_blobs(client, target, small, jobs, counts, progress)
            .await?;

        let mut layers = vec![map_desc];
        let mut listed = HashSet::new();
        for c in &map.chunks {
            if listed.insert(c.blob()) {
                layers.push(Descriptor {
                    media_type: CHUNK_BLOB.into(),
                    digest: c.blob(),
                    size: c.blob_size(),
                    annotations: BTreeMap::new(),
                });
            }
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
                    .head_manifest(&target.repository, &snapshot_tag(&p))
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
                "snapshot {} has {} distinct data chunks; its manifest would be {} bytes, over the {MAX_OCI_MANIFEST_BYTES} bytes registries accept",
                snapshot.name,
                map.chunks.len(),
                bytes.len()
            )));
        }
        let digest = Digest::of(&bytes);
        client
            .put_manifest(&target.repository, &digest.to_string(), bytes.clone())
            .await?;
        Ok(bytes)
    }

    /// The canonical manifest bytes of `snapshot`, checked against its digest.
    fn read_config(&self, snapshot: &SnapshotRow, name: &SnapshotName) -> Result<Vec<u8>> {
        let path = self.layout().snapshot_file(name, "manifest.json");
        let bytes = crate::files::read_limited(&path, crate::manifest::MAX_MANIFEST_BYTES)?
            .ok_or_else(|| {
                Error::integrity(path.display().to_string(), "larger than a manifest may be")
            })?;
        let parsed =
            crate::manifest::Manifest::parse(&bytes).map_err(|source| Error::Manifest {
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
        let (_, _, list) = crate::stage::digest_file_chunked(
            &f,
            len,
            path,
            None,
            crate::chunk::CHUNK_SIZE,
            &crate::progress::NoProgress,
        )?;
        Ok(list)
    }

    /// Store `sources` in the repository, `jobs` at a time, recording what
    /// it holds as each one lands; returns the blob of every chunk.
    async fn store_blobs(
        &self,
        client: &Client,
        target: &RemoteRef,
        sources: Vec<Source>,
        jobs: usize,
        counts: &mut Counts,
        progress: &dyn Progress,
    ) -> Result<Vec<(Digest, ChunkBlob)>> {
        let conn = self.db().conn();
        let (registry, repo) = (target.registry.as_str(), target.repository.as_str());
        let mut chunk_blobs = Vec::new();
        let mut results = stream::iter(
            sources
                .into_iter()
                .map(|source| store_one(conn, client, registry, repo, source)),
        )
        .buffer_unordered(jobs);
        let mut pending: Vec<Holding> = Vec::new();
        while let Some(result) = results.next().await {
            let (stored, chunk, logical) = result?;
            progress.advance(logical);
            let (blob, size) = match stored {
                Stored::Present(b, s) => {
                    counts.present += 1;
                    counts.bytes_present += s;
                    (b, s)
                }
                Stored::Uploaded(b, s) => {
                    counts.uploaded += 1;
                    counts.bytes_uploaded += s;
                    (b, s)
                }
                Stored::Mounted(b, s) => {
                    counts.mounted += 1;
                    (b, s)
                }
            };
            if let Some(c) = chunk {
                chunk_blobs.push(c);
            }
            pending.push((blob, size, chunk));
            if pending.len() >= 256 {
                self.record(registry, repo, &mut pending)?;
            }
            crate::failpoint::hit(crate::failpoint::PUSH_BLOB_STORED)?;
        }
        self.record(registry, repo, &mut pending)?;
        Ok(chunk_blobs)
    }

    /// Record in one transaction what the repository now holds.
    fn record(&self, registry: &str, repo: &str, pending: &mut Vec<Holding>) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let conn = self.db().conn();
        let tx =
            rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        for (blob, size, chunk) in pending.drain(..) {
            db::remote::record_remote(&tx, registry, repo, &blob, size)?;
            if let Some((c, b)) = chunk {
                db::remote::record_chunk_blob(&tx, &c, &b)?;
            }
        }
        tx.commit()?;
        Ok(())
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
        let mut sources = Vec::new();
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
            sources.push(Source::File(desc, path));
        }
        let empty = Bytes::from_static(b"{}");
        let config = Descriptor::of(EMPTY_CONFIG, &empty);
        sources.push(Source::Bytes(config.clone(), empty));
        self.store_blobs(
            client,
            target,
            sources,
            jobs,
            counts,
            &crate::progress::NoProgress,
        )
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

/// Store one blob unless the repository holds it: returns what happened,
/// the chunk's blob when it was a chunk, and the logical bytes it covers.
async fn store_one(
    conn: &rusqlite::Connection,
    client: &Client,
    registry: &str,
    repo: &str,
    source: Source,
) -> Result<(Stored, Option<(Digest, ChunkBlob)>, u64)> {
    match source {
        Source::Chunk {
            chunk,
            path,
            offset,
            len,
            known,
        } => {
            if let Some(b) = known {
                if db::remote::remote_has(conn, registry, repo, &b.blob)? {
                    return Ok((Stored::Present(b.blob, b.size), Some((chunk, b)), len));
                }
                if client.head_blob(repo, &b.blob).await?.is_some() {
                    return Ok((Stored::Present(b.blob, b.size), Some((chunk, b)), len));
                }
            }
            let body = compress_chunk(&path, offset, len, &chunk)?;
            let b = ChunkBlob {
                blob: Digest::of(&body),
                size: body.len() as u64,
            };
            let stored = if known.is_none()
                && (db::remote::remote_has(conn, registry, repo, &b.blob)?
                    || client.head_blob(repo, &b.blob).await?.is_some())
            {
                Stored::Present(b.blob, b.size)
            } else {
                upload(conn, client, registry, repo, &b.blob, Bytes::from(body)).await?
            };
            Ok((stored, Some((chunk, b)), len))
        }
        Source::Bytes(desc, body) => {
            if client.head_blob(repo, &desc.digest).await?.is_some() {
                return Ok((Stored::Present(desc.digest, desc.size), None, 0));
            }
            Ok((
                upload(conn, client, registry, repo, &desc.digest, body).await?,
                None,
                0,
            ))
        }
        Source::File(desc, path) => {
            if db::remote::remote_has(conn, registry, repo, &desc.digest)?
                || client.head_blob(repo, &desc.digest).await?.is_some()
            {
                return Ok((Stored::Present(desc.digest, desc.size), None, 0));
            }
            if let Some(from) = db::remote::remote_holder(conn, registry, repo, &desc.digest)?
                && client.mount_blob(repo, &desc.digest, &from).await?
            {
                return Ok((Stored::Mounted(desc.digest, desc.size), None, 0));
            }
            client
                .put_blob_file(repo, &desc.digest, &path, desc.size)
                .await?;
            Ok((Stored::Uploaded(desc.digest, desc.size), None, 0))
        }
    }
}

/// Upload a blob, mounting it from another repository of the registry
/// when one is known to hold it.
async fn upload(
    conn: &rusqlite::Connection,
    client: &Client,
    registry: &str,
    repo: &str,
    blob: &Digest,
    body: Bytes,
) -> Result<Stored> {
    let size = body.len() as u64;
    if let Some(from) = db::remote::remote_holder(conn, registry, repo, blob)?
        && client.mount_blob(repo, blob, &from).await?
    {
        return Ok(Stored::Mounted(*blob, size));
    }
    client.put_blob(repo, blob, body).await?;
    Ok(Stored::Uploaded(*blob, size))
}

/// Read the chunk at `offset` of `path`, check it is the chunk the index
/// says, and compress it.
fn compress_chunk(
    path: &std::path::Path,
    offset: u64,
    len: u64,
    chunk: &Digest,
) -> Result<Vec<u8>> {
    let file = File::open(path).at("open", path)?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset).at("read", path)?;
    let found = Digest::of(&buf);
    if found != *chunk {
        return Err(Error::integrity(
            path.display().to_string(),
            format!(
                "the {len} bytes at offset {offset} hash to {found}, not the indexed chunk {chunk}; run `msb-registry verify --content`"
            ),
        ));
    }
    zstd::bulk::compress(&buf, CHUNK_ZSTD_LEVEL).at("compress", path)
}
