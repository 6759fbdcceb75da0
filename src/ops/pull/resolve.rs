//! Resolve what a pull fetches: the head's manifest and config, its
//! parents' until one is here, and each one's chunk map, all checked
//! before anything trusts them.

use std::collections::HashSet;

use bytes::Bytes;

use super::report::{MAX_CHAIN, Transfer};
use crate::db;
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::model::manifest::ParsedManifest;
use crate::ops::registry::Registry;
use crate::ops::repair::{self, Condition};
use crate::remote::format::{
    CHUNK_MAP, ChunkMap, Descriptor, MAX_CHUNK_MAP_BYTES, MAX_PACK_BYTES, OciManifest, PACK,
    SNAPSHOT_ARTIFACT, SNAPSHOT_CONFIG, malformed, parse_config,
};
use crate::remote::reference::{snapshot_of_tag, snapshot_tag};
use crate::remote::{Access, Client, RemoteRef};
use crate::store::layout::SnapshotName;

/// A snapshot of the chain being pulled, as its manifest describes it.
pub(super) struct RemoteSnapshot {
    pub(super) manifest: OciManifest,
    pub(super) config: Bytes,
    pub(super) parsed: ParsedManifest,
    /// Its chunk map's bytes (checked against their digest, not parsed),
    /// fetched beside the config when the snapshot is to be pulled.
    pub(super) map: Option<Bytes>,
}

impl Registry {
    /// Fetch the head's manifest and config, then its parents' (through
    /// their `sha256-<hex>` tags) until one is present here, intact as far
    /// as [`repair::examine_indexed`] checks (re-hashed when `deep`): a
    /// damaged copy is pulled again, and the install repairs it. Returns
    /// the snapshots to pull, parents first (empty when the head is here).
    /// Each one's chunk map comes down beside its config; a `head_name`
    /// another snapshot holds is refused before the head's.
    pub(super) async fn resolve_chain(
        &self,
        client: &Client,
        source: &RemoteRef,
        reference: &str,
        head_name: Option<&SnapshotName>,
        deep: bool,
        transfer: &mut Transfer,
    ) -> Result<(Vec<RemoteSnapshot>, Digest, Digest)> {
        let repo = source.repository.as_str();
        client.ping(repo, Access::Pull).await?;
        crate::process::timeline::mark("resolve: pinged");
        let head_map = |digest: &Digest| -> Result<bool> {
            if self.present_intact(digest, deep)? {
                return Ok(false);
            }
            self.check_name_free(digest, head_name)?;
            Ok(true)
        };
        let (head, manifest_digest) = fetch_snapshot(client, repo, reference, &head_map, transfer)
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
        crate::process::timeline::mark("resolve: head fetched");
        let mut chain = Vec::new();
        let mut seen = HashSet::new();
        let mut next = Some(head);
        while let Some(s) = next.take() {
            if self.present_intact(&s.parsed.digest, deep)? {
                break;
            }
            if !seen.insert(s.parsed.digest) || seen.len() > MAX_CHAIN {
                return Err(malformed(
                    &source.repository_name(),
                    format!("the chain above {head_digest} loops or is longer than {MAX_CHAIN}"),
                ));
            }
            if let Some(parent) = s.parsed.manifest.parent
                && !self.present_intact(&parent, deep)?
            {
                let tag = snapshot_tag(&parent);
                let (p, _) = fetch_snapshot(client, repo, &tag, &|_| Ok(true), transfer)
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

    /// Whether snapshot `digest` has a row here and a directory
    /// [`repair::examine_indexed`] does not call damaged (one it cannot
    /// judge counts as present: it is never replaced).
    fn present_intact(&self, digest: &Digest, deep: bool) -> Result<bool> {
        let conn = self.db().conn();
        let Some(row) = db::snapshots::snapshot_by_digest(conn, digest)? else {
            return Ok(false);
        };
        let files = db::snapshots::snapshot_files(conn, digest)?;
        let condition = repair::examine_indexed(self.layout(), &row, &files, deep)?;
        Ok(!matches!(condition, Condition::Damaged(_)))
    }

    /// Check the chunk map, the first layer of `s`'s manifest (fetched
    /// now unless it came down with the config).
    pub(super) async fn fetch_map(
        &self,
        client: &Client,
        repo: &str,
        s: &RemoteSnapshot,
        max_file: u64,
        report: &mut Transfer,
    ) -> Result<(ChunkMap, Vec<u64>)> {
        let (first, chunks) = map_layer(&s.manifest, &s.parsed.digest)?;
        let bytes = match &s.map {
            Some(bytes) => bytes.clone(),
            None => {
                let bytes = client.get_blob(repo, &first.digest, first.size).await?;
                report.bytes_downloaded += bytes.len() as u64;
                bytes
            }
        };
        let map = ChunkMap::parse(&bytes, &s.parsed, chunks, max_file)?;
        let sizes = map.pack_sizes(chunks);
        Ok((map, sizes))
    }
}

/// The chunk map's descriptor in `manifest` (of snapshot `digest`) and its
/// packs', each of a kind and size a snapshot's layers may have.
fn map_layer<'m>(
    manifest: &'m OciManifest,
    digest: &Digest,
) -> Result<(&'m Descriptor, &'m [Descriptor])> {
    let subject = format!("manifest of snapshot {digest}");
    let Some((first, chunks)) = manifest.layers.split_first() else {
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
    Ok((first, chunks))
}

/// Fetch a snapshot's manifest and config by tag or digest, and its chunk
/// map at the same time when `wants_map` says so of the snapshot's
/// digest (the config's, as the manifest names it); `None` when the
/// repository has no such manifest.
async fn fetch_snapshot(
    client: &Client,
    repo: &str,
    reference: &str,
    wants_map: &dyn Fn(&Digest) -> Result<bool>,
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
    let map_layer = match wants_map(&manifest.config.digest)? {
        true => Some(map_layer(&manifest, &manifest.config.digest)?.0),
        false => None,
    };
    let config = client.get_blob(repo, &manifest.config.digest, manifest.config.size);
    let (config, map) = match map_layer {
        Some(layer) => {
            let map = client.get_blob(repo, &layer.digest, layer.size);
            let (config, map) = tokio::try_join!(config, map)?;
            (config, Some(map))
        }
        None => (config.await?, None),
    };
    report.bytes_downloaded += (config.len() + map.as_ref().map_or(0, Bytes::len)) as u64;
    let parsed = parse_config(&config, &format!("{subject} config"))?;
    Ok(Some((
        RemoteSnapshot {
            manifest,
            config,
            parsed,
            map,
        },
        digest,
    )))
}
