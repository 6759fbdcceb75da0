//! Assemble a pushed snapshot's documents: its chunk map (where the
//! repository holds each chunk), the pack layers, and the OCI manifest.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::plan::placed;
use super::resolve::MapFiles;
use crate::db::{self, SnapshotRow};
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::ops::registry::Registry;
use crate::remote::format::{
    CREATED, ChunkMap, Descriptor, MAX_OCI_MANIFEST_BYTES, MapChunk, OCI_MANIFEST, OciManifest,
    PACK, SNAPSHOT_ARTIFACT, SNAPSHOT_DIGEST, SNAPSHOT_PARENT, TITLE,
};
use crate::remote::{Client, RemoteRef};

impl Registry {
    /// `snapshot`'s chunk map: every chunk of `order` (and each delta's
    /// base) where the repository holds it, as recorded.
    pub(super) fn chunk_map(
        &self,
        target: &RemoteRef,
        snapshot: &SnapshotRow,
        files: MapFiles,
        order: &[Digest],
    ) -> Result<ChunkMap> {
        let registry = target.registry.as_str();
        let held =
            db::remote::remote_chunks_of(self.db().conn(), registry, target.repository.as_str())?;
        let mut packs: Vec<Digest> = Vec::new();
        let mut pack_index: HashMap<Digest, u32> = HashMap::new();
        let mut chunk_index: HashMap<Digest, u32> = HashMap::new();
        let mut chunks = Vec::with_capacity(order.len());
        let mut deltas = Vec::new();
        let mut pending: Vec<Digest> = order.to_vec();
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
        Ok(ChunkMap {
            schema: 1,
            snapshot: snapshot.digest,
            chunk_size: files.chunk_size,
            compression: "zstd".into(),
            packs,
            chunks,
            files: files.files,
            deltas,
        })
    }

    /// A layer descriptor for each pack, its size as recorded or by HEAD.
    pub(super) async fn pack_layers(
        &self,
        client: &Client,
        target: &RemoteRef,
        packs: &[Digest],
    ) -> Result<Vec<Descriptor>> {
        let (registry, repo) = (target.registry.as_str(), target.repository.as_str());
        let mut layers = Vec::with_capacity(packs.len());
        for pack in packs {
            let size = match db::remote::remote_blob_size(self.db().conn(), registry, repo, pack)? {
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
        Ok(layers)
    }

    /// The OCI manifest of `snapshot` over `config` and `layers` (the map
    /// first), its `subject` the parent's manifest when the repository
    /// holds it (`parent`: pushed along, or found there at the start);
    /// refused when it would be larger than registries accept.
    pub(super) fn snapshot_manifest(
        &self,
        snapshot: &SnapshotRow,
        parent: Option<&(Digest, Descriptor)>,
        config: Descriptor,
        layers: Vec<Descriptor>,
    ) -> Result<Bytes> {
        let mut annotations = BTreeMap::new();
        annotations.insert(TITLE.to_string(), snapshot.name.clone());
        annotations.insert(CREATED.to_string(), snapshot.created_at.clone());
        annotations.insert(SNAPSHOT_DIGEST.to_string(), snapshot.digest.to_string());
        let mut subject = None;
        if let Some(p) = snapshot.parent {
            annotations.insert(SNAPSHOT_PARENT.to_string(), p.to_string());
            subject = parent
                .filter(|(digest, _)| *digest == p)
                .map(|(_, desc)| desc.clone());
        }
        let packs = layers.len() - 1;
        let manifest = OciManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.into(),
            artifact_type: Some(SNAPSHOT_ARTIFACT.into()),
            config,
            layers,
            subject,
            annotations,
        };
        let bytes = Bytes::from(manifest.to_bytes());
        if bytes.len() as u64 > MAX_OCI_MANIFEST_BYTES {
            return Err(Error::Usage(format!(
                "snapshot {} spans {packs} packs; its manifest would be {} bytes, over the {MAX_OCI_MANIFEST_BYTES} bytes registries accept",
                snapshot.name,
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}
