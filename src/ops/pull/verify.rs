//! Verify: hash the assembled files in place, as `add` hashes what it
//! stages, and hold each to its chunk map and the upper's integrity.

use std::path::Path;

use super::resolve::RemoteSnapshot;
use crate::db::{ImportFileRow, SnapshotFileRow};
use crate::model::chunk::CHUNK_SIZE;
use crate::model::digest::Digest;
use crate::model::error::{IoContext, Result};
use crate::ops::registry::Registry;
use crate::process::progress::Progress;
use crate::remote::RemoteRef;
use crate::remote::format::{ChunkMap, MapFile, malformed};
use crate::store::layout::SnapshotName;
use crate::store::staged::StagedSnapshot;

impl Registry {
    /// Hash the assembled files in place, as `add` hashes what it stages:
    /// the upper's integrity must hold and every file must be what its
    /// chunk map says; returns the staged snapshot for install.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn check_assembled(
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
            check_length(&file, &path, len, s)?;
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
}

/// An assembled file has the length its map (and for the upper, the
/// manifest) gives it, whatever chunk size the map was cut at.
fn check_length(file: &std::fs::File, path: &Path, len: u64, s: &RemoteSnapshot) -> Result<()> {
    let assembled = file.metadata().at("stat", path)?.len();
    if assembled == len {
        return Ok(());
    }
    Err(malformed(
        &format!("chunk map of {}", s.parsed.digest),
        format!(
            "file {} was assembled to {assembled} bytes; it has {len}",
            crate::model::text::escape(&path.file_name().unwrap_or_default().to_string_lossy())
        ),
    ))
}

/// The chunk list cut from an assembled file must be its chunk map's
/// (when both are cut at the same size): nothing more, nothing less. The
/// refusal names the first offset where they differ.
fn matches_map(
    map: &ChunkMap,
    f: &MapFile,
    found: &[crate::model::chunk::Chunk],
    s: &RemoteSnapshot,
) -> Result<()> {
    if map.chunk_size != CHUNK_SIZE {
        return Ok(());
    }
    let listed: Vec<(u64, Digest)> = f
        .extents
        .iter()
        .map(|&(offset, i)| (offset, map.chunks[i as usize].chunk()))
        .collect();
    let cut: Vec<(u64, Digest)> = found.iter().map(|c| (c.offset, c.digest)).collect();
    let Some(at) = (0..listed.len().max(cut.len())).find(|&i| listed.get(i) != cut.get(i)) else {
        return Ok(());
    };
    let detail = match (listed.get(at), cut.get(at)) {
        (Some((l, _)), Some((c, _))) if l < c => {
            format!("the map lists chunk data at offset {l}, where the file holds only zeros")
        }
        (Some((l, _)), Some((c, _))) if c < l => {
            format!("the file holds data at offset {c}, where the map lists none")
        }
        (Some((l, d)), Some((_, found))) => {
            format!("the map lists chunk {d} at offset {l}, the file holds {found}")
        }
        (Some((l, _)), None) => {
            format!("the map lists chunk data at offset {l}, where the file holds only zeros")
        }
        (None, Some((c, _))) => {
            format!("the file holds data at offset {c}, where the map lists none")
        }
        (None, None) => unreachable!("a difference is at an index one of them has"),
    };
    Err(malformed(
        &format!("chunk map of {}", s.parsed.digest),
        format!(
            "file {} assembled from it differs from it: {detail}",
            crate::model::text::escape(&f.path)
        ),
    ))
}
