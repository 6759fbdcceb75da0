//! `push`: a snapshot (and with `--with-parents` its ancestors) into an OCI
//! registry, sending only the blobs the repository lacks (docs/oci.md).
//! Every snapshot of the chain is planned first; then the whole chain's
//! packs go up in one stream, in parallel, then the chunk maps; then each
//! snapshot's manifest under its `sha256-<hex>` tag, parents first, and the
//! user's tag last. A tag is set only on a snapshot whose every blob and
//! ancestor manifest is stored, the user's tag only on the whole chain.
//!
//! By step: `resolve` (the chain, configs and chunk lists), `plan` (what
//! the repository holds, what it lacks; `learn` checks what a chunk map
//! there claims), `transfer` (packs and blobs),
//! `manifest` (chunk map and OCI manifest), `image` (`--with-image`).

mod image;
mod learn;
mod manifest;
mod plan;
mod report;
mod resolve;
mod transfer;

use std::collections::BTreeMap;

use bytes::Bytes;

use self::plan::Pending;
use self::report::Counts;
pub use self::report::{DEFAULT_JOBS, PushOptions, PushReport, PushedImage, PushedSnapshot};
use self::resolve::MapFiles;
use self::transfer::Unplaced;
use crate::db::{self, SnapshotRow};
use crate::model::digest::Digest;
use crate::model::error::{Error, IoContext, Result};
use crate::ops::registry::Registry;
use crate::process::progress::Progress;
use crate::remote::format::{CHUNK_MAP, Descriptor, OCI_MANIFEST, SNAPSHOT_CONFIG};
use crate::remote::reference::{is_valid_tag, snapshot_of_tag, snapshot_tag};
use crate::remote::signatures::push_signatures;
use crate::remote::{Access, Client, RemoteRef};
use crate::store::layout::SnapshotName;

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
        check_tag_free(&tag, &head.digest, target)?;
        let chain = self.push_chain(&head, opts.with_parents)?;
        let client = Client::new(&target.registry, &opts.client)?;
        // What push writes is a cache of what the registry holds: losing
        // its last commits to a power cut costs only a HEAD or a resend.
        // On a read-only root it is kept in memory for this push only.
        let recorded = db::remote::holdings_writable(self.db().conn())?;
        if recorded {
            self.db().relax_durability()?;
        } else {
            db::remote::hold_in_memory(self.db().conn(), &target.registry)?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .at("start", "the async runtime")?;
        let attempt = || {
            runtime.block_on(async {
                tokio::select! {
                    r = self.push_async(&client, target, &tag, &chain, opts, progress) => r,
                    e = crate::process::interrupt::wait() => Err(e),
                }
            })
        };
        let result = match attempt() {
            // The registry lost blobs we recorded (its garbage collection
            // ran): forget what we knew of the repository, and push again.
            Err(Error::Remote { detail, .. }) if detail.contains("BLOB_UNKNOWN") => {
                db::remote::forget_remote(self.db().conn(), &target.registry, &target.repository)?;
                attempt()
            }
            other => other,
        };
        let mut report = result.map_err(|e| self.explain_push_failure(e, &chain))?;
        report.holdings_recorded = recorded;
        Ok(report)
    }

    /// A push that fails because a snapshot's files went away (an `rm`
    /// while it was being pushed) says so, as export does (exit 3); an
    /// interrupted one says what a rerun does.
    fn explain_push_failure(&self, e: Error, chain: &[SnapshotRow]) -> Error {
        match e {
            Error::Interrupted { signal, .. } => Error::Interrupted {
                signal,
                cleaned: "no tag names an incomplete snapshot; a rerun sends only what the registry lacks".into(),
            },
            Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                let conn = self.db().conn();
                let gone = chain.iter().find(|s| {
                    db::snapshots::snapshot_by_digest(conn, &s.digest).is_ok_and(|r| r.is_none())
                });
                match gone {
                    Some(s) => Error::NotFound {
                        what: "snapshot",
                        reference: format!(
                            "{} ({}): removed while it was being pushed",
                            s.name, s.digest
                        ),
                    },
                    None => e,
                }
            }
            e => e,
        }
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
        client.ping(&target.repository, Access::Push).await?;
        let jobs = if opts.jobs == 0 {
            DEFAULT_JOBS
        } else {
            opts.jobs
        };
        let mut counts = Counts::default();
        let fresh = self.fresh_repository(client, target).await?;
        let (there, parent_there) = parent_manifest(client, target, &chain[0], fresh).await?;
        let warnings = parent_warning(target, &chain[0], there);
        let dest = Dest {
            client,
            target,
            jobs,
            fresh,
            parent_there,
        };
        let image = if opts.with_image {
            Some(
                self.push_image(&dest, &chain[chain.len() - 1], &mut counts)
                    .await?,
            )
        } else {
            None
        };
        let documents = self.push_blobs(&dest, chain, &mut counts, progress).await?;
        let mut snapshots = self.put_manifests(&dest, chain, tag, documents).await?;
        for pushed in &mut snapshots {
            let rows = db::signatures::signatures_of(self.db().conn(), &pushed.digest)?;
            if !rows.is_empty() {
                let armored: Vec<String> = rows.into_iter().map(|r| r.signature).collect();
                push_signatures(client, &target.repository, &pushed.digest, &armored).await?;
                pushed.signatures = armored.len();
            }
        }
        Ok(PushReport {
            repository: target.repository_name(),
            tag: tag.to_string(),
            snapshots,
            blobs_uploaded: counts.uploaded,
            bytes_uploaded: counts.bytes_uploaded,
            blobs_present: counts.present,
            bytes_present: counts.bytes_present,
            blobs_mounted: counts.mounted,
            chunks_uploaded: counts.chunks_uploaded,
            chunks_present: counts.chunks_present,
            bytes_not_sent: counts.bytes_not_sent,
            image,
            warnings: warnings.into_iter().collect(),
            holdings_recorded: true,
        })
    }

    /// Whether the repository is fresh: nothing is recorded as held there
    /// and it lists no tag. Blobs this push builds are then uploaded
    /// without a HEAD each: only an interrupted push from elsewhere (one
    /// that stored no manifest) can have left one there, and a wrong guess
    /// costs that blob's upload, never a skipped one.
    async fn fresh_repository(&self, client: &Client, target: &RemoteRef) -> Result<bool> {
        let (registry, repo) = (target.registry.as_str(), target.repository.as_str());
        if db::remote::remote_holds_any(self.db().conn(), registry, repo)? {
            return Ok(false);
        }
        client.lists_no_tags(repo).await
    }

    /// Plan every snapshot of `chain` (parents first), then store the
    /// whole chain's packs and configs in one stream, then each chunk map;
    /// returns each snapshot's config and layers (the map first).
    async fn push_blobs(
        &self,
        dest: &Dest<'_>,
        chain: &[SnapshotRow],
        counts: &mut Counts,
        progress: &dyn Progress,
    ) -> Result<Vec<(Descriptor, Vec<Descriptor>)>> {
        let total: u64 = chain
            .iter()
            .map(|s| self.data_bytes(s))
            .sum::<Result<u64>>()?;
        progress.start("push", Some(total));
        let mut pending = Pending::new();
        let mut planned = Vec::with_capacity(chain.len());
        for (i, snapshot) in chain.iter().enumerate() {
            let pushed_parent = i.checked_sub(1).map(|p| &chain[p].digest);
            let plan = self
                .plan_snapshot(
                    dest,
                    snapshot,
                    pushed_parent,
                    &mut pending,
                    counts,
                    progress,
                )
                .await?;
            planned.push(plan);
        }
        let configs = planned.iter().map(|p| p.config.clone()).collect();
        let unplaced = planned.iter_mut().map(|p| std::mem::take(&mut p.unplaced));
        self.store_packs(dest, unplaced.collect(), configs, progress)
            .await?
            .add_to(counts);
        let maps = chain
            .iter()
            .zip(planned)
            .map(|(snapshot, plan)| self.store_map(dest, snapshot, plan));
        let mut out = Vec::with_capacity(chain.len());
        for (stored, size, config, layers) in futures_util::future::try_join_all(maps).await? {
            counts.add(&stored, size);
            out.push((config, layers));
        }
        progress.finish();
        Ok(out)
    }

    /// What one snapshot sends: its config, map files and the chunks
    /// neither the repository nor an earlier snapshot of this push holds.
    /// `pushed_parent` is the parent when this push stores it too.
    async fn plan_snapshot(
        &self,
        dest: &Dest<'_>,
        snapshot: &SnapshotRow,
        pushed_parent: Option<&Digest>,
        pending: &mut Pending,
        counts: &mut Counts,
        progress: &dyn Progress,
    ) -> Result<Planned> {
        let name = SnapshotName::chosen(&snapshot.name)?;
        let config = self.read_config(snapshot, &name)?;
        let (files, order, places) = self.cut_files(snapshot, &name)?;
        let held = self
            .find_held(dest, snapshot, pushed_parent, &order, pending, counts)
            .await?;
        let unplaced = self.unplaced(
            snapshot,
            (&order, &places),
            &held,
            pending,
            counts,
            progress,
        )?;
        let config_desc = Descriptor::of(SNAPSHOT_CONFIG, &config);
        Ok(Planned {
            config: (config_desc, Bytes::from(config)),
            files,
            order,
            unplaced,
        })
    }

    /// Store `snapshot`'s chunk map, once every pack it names is stored;
    /// returns how it was stored, its size, the config and the layers.
    async fn store_map(
        &self,
        dest: &Dest<'_>,
        snapshot: &SnapshotRow,
        plan: Planned,
    ) -> Result<(report::Stored, u64, Descriptor, Vec<Descriptor>)> {
        let (client, target) = (dest.client, dest.target);
        let map = self.chunk_map(target, snapshot, plan.files, &plan.order)?;
        let map_bytes = Bytes::from(map.to_bytes());
        let map_desc = Descriptor::of(CHUNK_MAP, &map_bytes);
        let mut layers = vec![map_desc.clone()];
        layers.extend(self.pack_layers(client, target, &map.packs).await?);
        let stored = self.store_blob(dest, &map_desc, map_bytes).await?;
        Ok((stored, map_desc.size, plan.config.0, layers))
    }

    /// Store each snapshot's manifest under its `sha256-<hex>` tag, parents
    /// first, then the user's `tag` on the head. A snapshot's tag is set
    /// only once its every blob and its parent's manifest are stored, and
    /// the user's tag only on the whole chain: no tag ever names a
    /// snapshot a pull could not complete.
    async fn put_manifests(
        &self,
        dest: &Dest<'_>,
        chain: &[SnapshotRow],
        tag: &str,
        documents: Vec<(Descriptor, Vec<Descriptor>)>,
    ) -> Result<Vec<PushedSnapshot>> {
        let (client, repo) = (dest.client, dest.target.repository.as_str());
        let mut pushed: Vec<PushedSnapshot> = Vec::with_capacity(chain.len());
        let mut previous: Option<(Digest, Descriptor)> = None;
        let mut head = Bytes::new();
        for (snapshot, (config, layers)) in chain.iter().zip(documents) {
            let parent = previous.as_ref().or(dest.parent_there.as_ref());
            let bytes = self.snapshot_manifest(snapshot, parent, config, layers)?;
            let identity = snapshot_tag(&snapshot.digest);
            client.put_manifest(repo, &identity, bytes.clone()).await?;
            crate::process::failpoint::hit(crate::process::failpoint::PUSH_MANIFEST_STORED)?;
            let digest = Digest::of(&bytes);
            previous = Some((
                snapshot.digest,
                Descriptor {
                    media_type: OCI_MANIFEST.into(),
                    digest,
                    size: bytes.len() as u64,
                    annotations: BTreeMap::new(),
                },
            ));
            pushed.push(PushedSnapshot {
                digest: snapshot.digest,
                name: snapshot.name.clone(),
                manifest_digest: digest,
                tags: vec![identity],
                signatures: 0,
            });
            head = bytes;
        }
        let last = pushed.last_mut().expect("a chain has a snapshot");
        if !last.tags.iter().any(|t| t == tag) {
            client.put_manifest(repo, tag, head).await?;
            last.tags.push(tag.to_string());
        }
        Ok(pushed)
    }
}

/// One snapshot of the chain, planned before any of its blobs is sent.
struct Planned {
    /// The config's descriptor and bytes.
    config: (Descriptor, Bytes),
    files: MapFiles,
    /// Its distinct chunks in order of first use.
    order: Vec<Digest>,
    /// What it sends.
    unplaced: Vec<Unplaced>,
}

/// Where a push goes, and what it learnt of the repository at the start.
pub(super) struct Dest<'a> {
    pub(super) client: &'a Client,
    pub(super) target: &'a RemoteRef,
    /// Blob transfers in flight.
    pub(super) jobs: usize,
    /// Nothing recorded there and no tag listed: blobs built by this push
    /// are uploaded without asking first (see `fresh_repository`).
    pub(super) fresh: bool,
    /// The first snapshot's parent's manifest in the repository, when
    /// that parent is not pushed along and the repository has it.
    pub(super) parent_there: Option<(Digest, Descriptor)>,
}

/// Refuse a tag that names something else by its identity:
/// `sha256-<hex>` of another snapshot, or `image-sha256-<hex>`; later pulls
/// find parents and images through them.
fn check_tag_free(tag: &str, head: &Digest, target: &RemoteRef) -> Result<()> {
    let reserved = tag.starts_with("image-sha256-")
        || (tag.starts_with("sha256-") && snapshot_of_tag(tag) != Some(*head));
    if !reserved {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "tag {tag} is reserved: sha256-<hex> names a snapshot by its digest and image-sha256-<hex> an image's cache artifacts; give another: {}:TAG",
        target.repository_name()
    )))
}

/// Whether the repository has `first`'s parent (asked once, and not at
/// all of a fresh repository, which has no tag), and its manifest's
/// descriptor when the registry says its digest.
async fn parent_manifest(
    client: &Client,
    target: &RemoteRef,
    first: &SnapshotRow,
    fresh: bool,
) -> Result<(bool, Option<(Digest, Descriptor)>)> {
    let Some(parent) = first.parent else {
        return Ok((false, None));
    };
    if fresh {
        return Ok((false, None));
    }
    let Some(found) = client
        .head_manifest(&target.repository, &snapshot_tag(&parent))
        .await?
    else {
        return Ok((false, None));
    };
    let descriptor = found.digest.map(|digest| {
        (
            parent,
            Descriptor {
                media_type: OCI_MANIFEST.into(),
                digest,
                size: found.size,
                annotations: BTreeMap::new(),
            },
        )
    });
    Ok((true, descriptor))
}

/// A warning when the first snapshot's parent is not in the repository.
fn parent_warning(target: &RemoteRef, first: &SnapshotRow, there: bool) -> Option<String> {
    let parent = first.parent?;
    if there {
        return None;
    }
    Some(format!(
        "parent {parent} of {} is not in {}; a pull elsewhere needs it there (push --with-parents) or locally",
        first.name,
        target.repository_name()
    ))
}
