//! msb-registry: an embedded-SQLite registry for microsandbox VM disk
//! snapshots. [`Registry`] is the public API; every command of the binary
//! is one of its operations returning a serializable report.
//!
//! ```
//! use msb_registry::model::manifest::{Format, ImagePin, Manifest, Upper};
//! use msb_registry::{
//!     AddOptions, ExportOptions, ExportTarget, ImportOptions, ImportSource, NoProgress, Registry,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tmp = tempfile::tempdir()?;
//! // A snapshot directory as microsandbox writes it: a manifest and a sparse upper.
//! let dir = tmp.path().join("web");
//! std::fs::create_dir(&dir)?;
//! std::fs::File::create(dir.join("upper.ext4"))?.set_len(1 << 20)?;
//! let manifest = Manifest {
//!     schema: 1,
//!     format: Format::Raw,
//!     fstype: "ext4".into(),
//!     image: ImagePin {
//!         reference: "python:3.12".into(),
//!         manifest_digest: "sha256:0000000000000000000000000000000000000000000000000000000000000001".parse()?,
//!     },
//!     parent: None,
//!     created_at: "2026-10-01T09:00:00Z".into(),
//!     labels: Default::default(),
//!     upper: Upper { file: "upper.ext4".into(), size_bytes: 1 << 20, integrity: None },
//!     source_sandbox: None,
//! };
//! std::fs::write(dir.join("manifest.json"), manifest.canonical_bytes())?;
//!
//! let mut registry = Registry::open(tmp.path().join("a"))?;
//! let added = registry.add(&dir, &AddOptions::default(), &NoProgress)?;
//! assert_eq!(added.digest, manifest.digest());
//!
//! let archive = tmp.path().join("web.tar.zst");
//! let target = ExportTarget::File(archive.clone());
//! registry.export("web", &ExportOptions::default(), &target, &NoProgress)?;
//!
//! let mut other = Registry::open(tmp.path().join("b"))?;
//! let source = ImportSource::Path(archive);
//! let imported = other.import(&source, &ImportOptions::default(), &NoProgress)?;
//! assert_eq!(imported.head, added.digest);
//! assert!(other.verify(None, true, &NoProgress)?.ok);
//! # Ok(())
//! # }
//! ```
//!
//! # Layers
//!
//! Each folder is one layer; data flows down and nothing imports upward:
//!
//! | layer | folders | what it holds |
//! | --- | --- | --- |
//! | interface | `cli/`, `main.rs` | arguments, rendering, exit codes |
//! | operations | `ops/` | one module per command, each with its report |
//! | formats and protocols | `archive/`, `journal/`, `remote/`, `sample/` | the tar grammar and reader, crash journals, the OCI client and format, sample data |
//! | storage | `db/`, `store/` | SQL (only under `db`), the on-disk layout, file I/O, staging |
//! | model | `model/`, `process/` | manifests, images, digests, chunks, errors; progress, interrupts, failpoints |
//!
//! In particular the journal layer is handed a layout and a database, never
//! a `Registry`, and SQL lives only under `db`. The integration test
//! `tests/it/layers.rs` checks the rule on the source folder by folder and
//! refuses any import loop or any import through this file's re-exports.

#![warn(missing_docs)]

mod archive;
#[doc(hidden)]
pub mod cli;
#[doc(hidden)]
pub mod db;
mod journal;
pub mod model;
mod ops;
pub mod process;
pub mod remote;
#[doc(hidden)]
pub mod sample;
mod store;
mod trust;

pub use archive::entry::MAX_MEMBERS;
pub use archive::{Chunk as TarChunk, OpenedSource, ReadError, TarReader};
pub use model::digest::Digest;
pub use model::error::{Error, Result, exit};
pub use ops::add::{AddOptions, AddReport};
pub use ops::export::plan::Selection;
pub use ops::export::{Compression, ExportOptions, ExportReport, ExportTarget};
/// gc's plan and survey, for the benchmark that times each step.
#[doc(hidden)]
pub use ops::gc;
pub use ops::gc::{GcOptions, GcReport, Kept, KeptReason, KindTotal, Removal, RemovalKind};
pub use ops::import::{ImportOptions, ImportReport, ImportSource};
pub use ops::pull::{PullOptions, PullReport, Transfer};
pub use ops::push::{PushOptions, PushReport, PushedImage, PushedSnapshot};
pub use ops::query::{LineageEntry, ListEntry, ShowReport, SqlResult, sql};
pub use ops::registry::Registry;
pub use ops::reindex::{ReindexReport, Skipped};
pub use ops::remove::RemoveReport;
pub use ops::rename::RenameReport;
pub use ops::verify::{Problem, ProblemKind, UnfinishedImport, VerifyReport};
pub use process::progress::{NoProgress, Progress};
pub use store::layout::SnapshotName;
