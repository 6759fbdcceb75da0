//! `push`: a snapshot (and with `--with-parents` its ancestors) into an OCI
//! registry, sending only the blobs the repository lacks (docs/oci.md).
//! Blobs first, in parallel; then each snapshot's manifest by digest; tags
//! last, so no tag ever names a half-pushed snapshot.
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

use self::report::Counts;
pub use self::report::{DEFAULT_JOBS, PushOptions, PushReport, PushedImage, PushedSnapshot};
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
                cleaned: "no tag was set; a rerun sends only what the registry lacks".into(),
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
        let manifests = self
            .push_manifests(&dest, chain, &mut counts, progress)
            .await?;
        crate::process::failpoint::hit(crate::process::failpoint::PUSH_MANIFESTS_STORED)?;
        let mut snapshots = set_tags(client, &target.repository, chain, tag, &manifests).await?;
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

    /// Store every snapshot of `chain` (parents first) by manifest digest;
    /// returns each manifest's bytes and digest.
    async fn push_manifests(
        &self,
        dest: &Dest<'_>,
        chain: &[SnapshotRow],
        counts: &mut Counts,
        progress: &dyn Progress,
    ) -> Result<Vec<(Bytes, Digest)>> {
        let total: u64 = chain
            .iter()
            .map(|s| self.data_bytes(s))
            .sum::<Result<u64>>()?;
        progress.start("push", Some(total));
        let mut manifests: Vec<(Bytes, Digest)> = Vec::new();
        let mut previous: Option<(Digest, Descriptor)> = None;
        for snapshot in chain {
            let manifest = self
                .push_snapshot(dest, snapshot, previous.as_ref(), counts, progress)
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
        Ok(manifests)
    }

    /// Store one snapshot's packs, chunk map, config and manifest (by
    /// digest); returns the manifest's bytes. `pushed` is the parent when
    /// this push stored it just before. The config goes up alongside the
    /// packs; the chunk map, which says where they are, after them.
    async fn push_snapshot(
        &self,
        dest: &Dest<'_>,
        snapshot: &SnapshotRow,
        pushed: Option<&(Digest, Descriptor)>,
        counts: &mut Counts,
        progress: &dyn Progress,
    ) -> Result<Bytes> {
        let (client, target) = (dest.client, dest.target);
        let name = SnapshotName::chosen(&snapshot.name)?;
        let config = self.read_config(snapshot, &name)?;
        let (files, order, places) = self.cut_files(snapshot, &name)?;
        let held = self
            .find_held(dest, snapshot, pushed.map(|(d, _)| d), &order, counts)
            .await?;
        let unplaced = self.unplaced(snapshot, &order, &places, &held, counts, progress)?;
        let config_desc = Descriptor::of(SNAPSHOT_CONFIG, &config);
        let config_body = Bytes::from(config);
        self.store_packs(dest, unplaced, (config_desc.clone(), config_body), progress)
            .await?
            .add_to(counts);
        let map = self.chunk_map(target, snapshot, files, &order)?;
        let map_bytes = Bytes::from(map.to_bytes());
        let map_desc = Descriptor::of(CHUNK_MAP, &map_bytes);
        let mut layers = vec![map_desc.clone()];
        layers.extend(self.pack_layers(client, target, &map.packs).await?);
        let map_stored = self.store_blob(dest, &map_desc, map_bytes).await?;
        counts.add(&map_stored, map_desc.size);
        let parent = pushed.or(dest.parent_there.as_ref());
        let bytes = self.snapshot_manifest(snapshot, parent, config_desc, layers)?;
        let digest = Digest::of(&bytes);
        client
            .put_manifest(&target.repository, &digest.to_string(), bytes.clone())
            .await?;
        Ok(bytes)
    }
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

/// Tag each pushed manifest `sha256-<hex>` of its snapshot, and the head
/// `tag` too: tags last, so none names a half-pushed snapshot.
async fn set_tags(
    client: &Client,
    repo: &str,
    chain: &[SnapshotRow],
    tag: &str,
    manifests: &[(Bytes, Digest)],
) -> Result<Vec<PushedSnapshot>> {
    let mut pushed = Vec::new();
    for (snapshot, (bytes, digest)) in chain.iter().zip(manifests) {
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
            signatures: 0,
        });
    }
    Ok(pushed)
}
