//! `demo`: the main job end to end on generated data — build a registry
//! holding a three-snapshot chain with sparse uppers and an image cache,
//! export it with parents and image, import the archive into a second
//! registry, and walk and verify it there.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::model::manifest::{INTEGRITY_SHA256, INTEGRITY_SPARSE_SHA256_V1};
use crate::ops::add::AddOptions;
use crate::ops::export::DEFAULT_LEVEL;
use crate::ops::export::plan::Selection;
use crate::ops::export::{Compression, ExportOptions, ExportTarget};
use crate::ops::import::{ImportOptions, ImportSource};
use crate::ops::query::LineageEntry;
use crate::ops::registry::Registry;
use crate::process::progress::Progress;
use crate::sample::{SnapshotSpec, mixed_bytes, write_image_cache, write_snapshot};

/// Logical size of each sample upper.
const UPPER_LEN: u64 = 1 << 30;

/// What the demo did, step by step.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The registry the sample was built in.
    pub source_root: PathBuf,
    /// The registry the archive was imported into.
    pub imported_root: PathBuf,
    /// The archive written by export.
    pub archive: PathBuf,
    /// Archive size in bytes.
    pub archive_bytes: u64,
    /// Logical bytes of the three uppers.
    pub logical_bytes: u64,
    /// Bytes of data (not holes) in them.
    pub data_bytes: u64,
    /// Snapshot digests, root first.
    pub snapshots: Vec<Digest>,
    /// Cache files carried by the archive.
    pub cache_files: usize,
    /// Seconds spent building the sample and adding it to the source registry.
    pub build_seconds: f64,
    /// Seconds spent exporting.
    pub export_seconds: f64,
    /// Seconds spent importing.
    pub import_seconds: f64,
    /// The head's lineage in the imported registry.
    pub lineage: Vec<LineageEntry>,
    /// Files `verify --content` checked in the imported registry.
    pub verified_files: u64,
    /// Bytes `verify --content` read in the imported registry.
    pub verified_bytes: u64,
}

/// The demo's chain, root first: each snapshot's name and integrity algorithm.
const STAGES: [(&str, &str); 3] = [
    ("py-base", INTEGRITY_SPARSE_SHA256_V1),
    ("py-deps", INTEGRITY_SHA256),
    ("py-app", INTEGRITY_SPARSE_SHA256_V1),
];

/// Run the demo inside `dir` (created if needed).
pub fn run(dir: &Path, progress: &dyn Progress) -> Result<DemoReport> {
    let started = Instant::now();
    let source_root = dir.join("source-registry");
    let mut source = Registry::open(&source_root)?;
    let (snapshots, data_bytes) = build_chain(&mut source, &dir.join("artifacts"), progress)?;

    let build_seconds = started.elapsed().as_secs_f64();

    let archive = dir.join("py-app.tar.zst");
    let export_opts = ExportOptions {
        selection: Selection {
            with_parents: true,
            base: None,
            with_image: true,
        },
        compression: Compression::Zstd(DEFAULT_LEVEL),
        dense: false,
    };
    let started = Instant::now();
    let exported = source.export(
        "py-app",
        &export_opts,
        &ExportTarget::File(archive.clone()),
        progress,
    )?;
    let export_seconds = started.elapsed().as_secs_f64();

    let imported_root = dir.join("registry");
    let mut imported = Registry::open(&imported_root)?;
    let started = Instant::now();
    let report = imported.import(
        &ImportSource::Path(archive.clone()),
        &ImportOptions {
            name: Some("py-app".into()),
            ..ImportOptions::default()
        },
        progress,
    )?;
    let import_seconds = started.elapsed().as_secs_f64();
    let lineage = imported.lineage(&report.head.to_string(), false)?;
    let verified = imported.verify(None, true, progress)?;
    if !verified.ok {
        return Err(Error::VerifyFailed {
            problems: verified.problems.len(),
        });
    }
    Ok(DemoReport {
        source_root,
        imported_root,
        archive_bytes: exported.bytes,
        archive,
        logical_bytes: UPPER_LEN * STAGES.len() as u64,
        data_bytes,
        snapshots,
        cache_files: exported.cache_files.len(),
        export_seconds,
        import_seconds,
        lineage,
        build_seconds,
        verified_files: verified.checked_files,
        verified_bytes: verified.checked_bytes,
    })
}

/// Write the image cache and the sample chain under `artifacts` and add
/// them to `source`; returns the snapshot digests, root first, and the
/// bytes of data the uppers hold.
fn build_chain(
    source: &mut Registry,
    artifacts: &Path,
    progress: &dyn Progress,
) -> Result<(Vec<Digest>, u64)> {
    let cache_dir = artifacts.join("cache");
    let image = write_image_cache(&cache_dir, "python:3.12", 1, &[4 << 20, 2 << 20, 1 << 20])?;
    let mut snapshots: Vec<Digest> = Vec::new();
    let mut data_bytes = 0;
    for (i, (name, integrity)) in STAGES.iter().enumerate() {
        let mut spec = SnapshotSpec::new(&image).label("stage", name);
        spec.len = UPPER_LEN;
        spec.integrity = Some(integrity);
        spec.created_at = format!("2026-10-01T09:0{i}:00Z");
        spec.data = (0..4u64)
            .map(|j| {
                (
                    (j * 256 + i as u64 * 16) << 20,
                    mixed_bytes(i as u64 * 10 + j, 2 << 20),
                )
            })
            .collect();
        data_bytes += spec.data.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
        if let Some(parent) = snapshots.last() {
            spec = spec.parent(*parent);
        }
        let snapshot_dir = artifacts.join(name);
        snapshots.push(write_snapshot(&snapshot_dir, &spec)?);
        let opts = AddOptions {
            name: Some(name.to_string()),
            cache_dir: (i == 0).then(|| cache_dir.clone()),
            ..AddOptions::default()
        };
        source.add(&snapshot_dir, &opts, progress)?;
    }
    Ok((snapshots, data_bytes))
}
