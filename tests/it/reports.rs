//! The `--json` reports of the binary, decoded into typed structs: one set
//! shared by every test module. Each struct holds the fields tests read;
//! serde ignores the rest.

#![allow(dead_code)]

use std::collections::BTreeMap;

use msb_registry::model::digest::Digest;
use serde::Deserialize;

/// One row of `list --json`.
#[derive(Debug, Deserialize)]
pub struct ListEntry {
    pub digest: Digest,
    pub name: String,
    pub parent: Option<Digest>,
    pub image_ref: String,
    pub image_manifest_digest: Digest,
    pub size_bytes: u64,
    pub created_at: String,
    pub labels: BTreeMap<String, String>,
    pub shallow: bool,
}

/// One row of `lineage --json`.
#[derive(Debug, Deserialize, PartialEq)]
pub struct LineageEntry {
    pub digest: Digest,
    pub name: Option<String>,
    pub depth: u64,
    #[serde(default)]
    pub missing: bool,
}

/// `add --json`.
#[derive(Debug, Deserialize)]
pub struct AddReport {
    pub digest: Digest,
    pub name: String,
    pub already_present: bool,
    pub files: usize,
    pub cache_files_installed: usize,
    pub cache_files_skipped: usize,
}

/// `import --json`.
#[derive(Debug, Deserialize)]
pub struct ImportReport {
    pub head: Digest,
    pub name: String,
    pub imported: Vec<Digest>,
    pub skipped: Vec<Digest>,
    pub cache_files_installed: usize,
    pub cache_files_skipped: usize,
}

/// `export --json`.
#[derive(Debug, Deserialize)]
pub struct ExportReport {
    pub archive: String,
    pub bytes: u64,
    pub snapshots: Vec<Digest>,
    pub head: Digest,
    pub cache_files: Vec<String>,
}

/// One removal named by `gc --json`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Removed {
    pub kind: String,
    pub path: String,
    pub bytes: u64,
}

/// `gc --json`.
#[derive(Debug, Deserialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub removed: Vec<Removed>,
    pub files: usize,
    pub bytes: u64,
}

/// One problem named by `verify --json`.
#[derive(Debug, Deserialize)]
pub struct Problem {
    pub kind: String,
    pub path: String,
    pub digest: Option<Digest>,
    pub detail: String,
}

/// An import journal `verify --json` found unfinished.
#[derive(Debug, Deserialize)]
pub struct UnfinishedImport {
    pub id: String,
    pub state: String,
    pub live: bool,
}

/// `verify --json`.
#[derive(Debug, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub problems: Vec<Problem>,
    pub checked_files: u64,
    pub checked_bytes: u64,
    pub debris: Vec<String>,
    pub unfinished_imports: Vec<UnfinishedImport>,
}

/// `du --json`.
#[derive(Debug, Deserialize)]
pub struct DuReport {
    pub snapshots: Vec<Usage>,
    pub totals: Totals,
    pub unindexed: u64,
}

/// One snapshot's row of `du --json`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub name: String,
    pub digest: Digest,
    pub parent: Option<Digest>,
    pub logical_bytes: u64,
    pub data_bytes: u64,
    pub unique_bytes: u64,
    pub new_bytes: u64,
    pub rm_frees_bytes: u64,
    pub indexed: bool,
}

/// The totals of `du --json`.
#[derive(Debug, Deserialize)]
pub struct Totals {
    pub snapshots: u64,
    pub logical_bytes: u64,
    pub data_bytes: u64,
    pub unique_chunks: u64,
    pub unique_chunk_bytes: u64,
    pub allocated_bytes: u64,
    pub dedup_ratio: f64,
}
