//! `du`: what each snapshot really costs, from the chunk index. Like zfs's
//! `used` against `referenced`: a snapshot's logical size, the data it
//! holds, the bytes no other snapshot shares, the bytes its parent does not
//! hold, and what `rm` would give back to the file system; plus registry
//! totals and the dedup ratio a chunk store would reach.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::db;
use crate::model::digest::Digest;
use crate::model::error::Result;
use crate::ops::registry::Registry;
use crate::store::files::allocated_bytes;
use crate::store::layout::SnapshotName;

/// One snapshot's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotUsage {
    /// Name.
    pub name: String,
    /// Digest.
    pub digest: Digest,
    /// Parent digest, when the parent is in the registry.
    pub parent: Option<Digest>,
    /// Apparent size of its files.
    pub logical_bytes: u64,
    /// Bytes in its data chunks (holes excluded).
    pub data_bytes: u64,
    /// Bytes of its chunks held by no other snapshot: what removing it frees
    /// from a chunk store (and what pushing it after all others would send).
    pub unique_bytes: u64,
    /// Bytes of its chunks its parent does not hold (all of its distinct
    /// chunks when it has no parent here): its cost beyond its parent.
    pub new_bytes: u64,
    /// Bytes its files occupy on disk, which `rm` gives back (uppers are
    /// stored whole, so this counts shared blocks too).
    pub rm_frees_bytes: u64,
    /// False when some file of it has no chunk list yet (it entered the
    /// registry before the chunk index; `reindex` computes them): its chunk
    /// figures are then incomplete.
    pub indexed: bool,
}

/// Registry-wide totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageTotals {
    /// Snapshots in the registry.
    pub snapshots: u64,
    /// Sum of the snapshots' logical sizes.
    pub logical_bytes: u64,
    /// Sum of their data bytes.
    pub data_bytes: u64,
    /// Distinct chunks across the registry.
    pub unique_chunks: u64,
    /// Bytes of the distinct chunks: what a chunk store would hold.
    pub unique_chunk_bytes: u64,
    /// Bytes the snapshot files occupy on disk today.
    pub allocated_bytes: u64,
    /// `data_bytes / unique_chunk_bytes` (1 when there is no data).
    pub dedup_ratio: f64,
}

/// What `du` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DuReport {
    /// The snapshots asked for (all when none were named), by name.
    pub snapshots: Vec<SnapshotUsage>,
    /// The whole registry.
    pub totals: UsageTotals,
    /// Snapshots of the registry without complete chunk lists.
    pub unindexed: u64,
}

impl Registry {
    /// Usage of the snapshots `references` name (every snapshot when empty),
    /// with the registry's totals.
    pub fn du(&self, references: &[String]) -> Result<DuReport> {
        let wanted: Option<HashSet<Digest>> = if references.is_empty() {
            None
        } else {
            Some(
                references
                    .iter()
                    .map(|r| Ok(self.resolve(r)?.digest))
                    .collect::<Result<_>>()?,
            )
        };
        let tx = self.db().read()?;
        let rows = db::chunks::usage(&tx)?;
        let (unique_chunk_bytes, unique_chunks) = db::chunks::distinct_chunks(&tx)?;
        let files = db::gc::all_snapshot_files(&tx)?;
        drop(tx);

        let names: HashMap<Digest, &str> =
            rows.iter().map(|r| (r.digest, r.name.as_str())).collect();
        let mut allocated: HashMap<Digest, u64> = HashMap::new();
        for (digest, f) in &files {
            let Some(name) = names
                .get(digest)
                .and_then(|n| n.parse::<SnapshotName>().ok())
            else {
                continue;
            };
            let path = self
                .layout()
                .snapshot_file(&self.snapshot_dir(&name), &f.path);
            let bytes = path
                .symlink_metadata()
                .map(|m| allocated_bytes(&m))
                .unwrap_or(0);
            *allocated.entry(*digest).or_default() += bytes;
        }

        let totals = UsageTotals {
            snapshots: rows.len() as u64,
            logical_bytes: rows.iter().map(|r| r.logical).sum(),
            data_bytes: rows.iter().map(|r| r.data).sum(),
            unique_chunks,
            unique_chunk_bytes,
            allocated_bytes: allocated.values().sum(),
            dedup_ratio: 1.0,
        };
        let totals = UsageTotals {
            dedup_ratio: if unique_chunk_bytes == 0 {
                1.0
            } else {
                totals.data_bytes as f64 / unique_chunk_bytes as f64
            },
            ..totals
        };
        let unindexed = rows.iter().filter(|r| !r.indexed).count() as u64;
        let snapshots = rows
            .into_iter()
            .filter(|r| wanted.as_ref().is_none_or(|w| w.contains(&r.digest)))
            .map(|r| SnapshotUsage {
                rm_frees_bytes: allocated.get(&r.digest).copied().unwrap_or(0),
                name: r.name,
                digest: r.digest,
                parent: r.parent,
                logical_bytes: r.logical,
                data_bytes: r.data,
                unique_bytes: r.unique,
                new_bytes: r.new,
                indexed: r.indexed,
            })
            .collect();
        Ok(DuReport {
            snapshots,
            totals,
            unindexed,
        })
    }
}
