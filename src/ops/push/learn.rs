//! Learn what a repository holds from a chunk map there (the parent's,
//! pushed from another machine), trusting none of it unchecked: a chunk
//! is recorded as held only once its frame, fetched by range, decodes to
//! that chunk. Anyone who can push to the repository can rewrite the map;
//! a chunk it claims falsely is sent again, never skipped.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use futures_util::stream::{self, StreamExt};

use crate::db;
use crate::model::digest::Digest;
use crate::model::error::Result;
use crate::model::manifest::MAX_MANIFEST_BYTES;
use crate::ops::registry::Registry;
use crate::remote::format::{
    CHUNK_MAP, ChunkMap, MAX_CHUNK_MAP_BYTES, OciManifest, SNAPSHOT_ARTIFACT, parse_config,
};
use crate::remote::reference::snapshot_tag;
use crate::remote::{Client, RemoteRef};

impl Registry {
    /// Record where the repository holds the chunks of `wanted` that the
    /// chunk map of snapshot `digest` there places in plain frames (if it
    /// is there), each checked by decoding its frame, `jobs` at a time. A
    /// delta frame is not learnt (its chunk is sent again).
    pub(super) async fn learn_from(
        &self,
        client: &Client,
        target: &RemoteRef,
        digest: &Digest,
        wanted: &[Digest],
        jobs: usize,
    ) -> Result<()> {
        let Some((map, sizes)) = self.parent_map(client, target, digest).await? else {
            return Ok(());
        };
        let conn = self.db().conn();
        let bases = map.bases();
        let index: HashMap<Digest, usize> = map
            .chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (c.chunk(), i))
            .collect();
        let mut candidates = Vec::new();
        for chunk in wanted {
            if let Some(&i) = index.get(chunk)
                && bases[i].is_none()
                && let Some(len) = db::chunks::chunk_length(conn, chunk)?
            {
                candidates.push((i, len));
            }
        }
        let repo = target.repository.as_str();
        let (map_ref, sizes_ref) = (&map, &sizes);
        let mut checks = stream::iter(candidates.into_iter().map(|(i, len)| async move {
            let c = map_ref.chunks[i];
            let frame = client
                .get_range(
                    repo,
                    &map_ref.packs[c.pack()],
                    sizes_ref[c.pack()],
                    c.offset(),
                    c.frame_len(),
                )
                .await?;
            Ok::<_, crate::model::error::Error>(decodes_to(&frame, len, &c.chunk()).then_some(i))
        }))
        .buffer_unordered(jobs);
        let mut verified = Vec::new();
        while let Some(done) = checks.next().await {
            verified.extend(done?);
        }
        drop(checks);
        let verified: HashSet<Digest> = verified
            .into_iter()
            .map(|i| map.chunks[i].chunk())
            .collect();
        crate::remote::holdings::record_map(conn, &target.registry, repo, &map, &sizes, &|c| {
            verified.contains(c)
        })
    }

    /// The chunk map of snapshot `digest` in the repository, checked as a
    /// pull checks it, and its packs' sizes; `None` when it is not there.
    async fn parent_map(
        &self,
        client: &Client,
        target: &RemoteRef,
        digest: &Digest,
    ) -> Result<Option<(ChunkMap, Vec<u64>)>> {
        let repo = target.repository.as_str();
        let Some((bytes, _)) = client.get_manifest(repo, &snapshot_tag(digest)).await? else {
            return Ok(None);
        };
        let subject = format!("{}:{}", target.repository_name(), snapshot_tag(digest));
        let manifest = OciManifest::parse(&bytes, SNAPSHOT_ARTIFACT, &subject)?;
        let Some((first, packs)) = manifest.layers.split_first() else {
            return Ok(None);
        };
        if first.media_type != CHUNK_MAP || first.size > MAX_CHUNK_MAP_BYTES {
            return Ok(None);
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
        Ok(Some((map, sizes)))
    }
}

/// Whether `frame` is one zstd frame of exactly `len` bytes hashing to `chunk`.
fn decodes_to(frame: &[u8], len: u64, chunk: &Digest) -> bool {
    let Ok(decoder) = zstd::stream::read::Decoder::with_buffer(frame) else {
        return false;
    };
    let mut bytes = Vec::with_capacity(len as usize);
    let read = decoder.single_frame().take(len + 1).read_to_end(&mut bytes);
    read.is_ok() && bytes.len() as u64 == len && Digest::of(&bytes) == *chunk
}
