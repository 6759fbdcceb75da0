//! msb-registry: an embedded-SQLite registry for microsandbox VM disk
//! snapshots. [`Registry`] is the public API; every command of the binary
//! is one of its operations returning a serializable report.
//!
//! ```
//! use msb_registry::manifest::{Format, ImagePin, Manifest, Upper};
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
//! Data flows down, and nothing imports upward:
//!
//! `cli` → operations (`registry`, `add`, `gc`, `verify`, `reindex`,
//! `remove`, `query`, `install`, `archive::{import, export}`) → `archive`
//! (grammar, tar, checks) and `journal` (leases, promotion, recovery) →
//! `db`, `layout`, `files`, `stage`, `staged` → `manifest`, `image`,
//! `digest`, `error`.
//!
//! In particular the journal layer is handed a layout and a database, never
//! a `Registry`, and SQL lives only under `db`. The integration test
//! `tests/it/layers.rs` checks the rule on the source and refuses any
//! import loop.

#![warn(missing_docs)]

mod add;
mod archive;
pub mod chunk;
#[doc(hidden)]
pub mod cli;
#[doc(hidden)]
pub mod db;
mod demo;
pub mod digest;
mod du;
mod error;
#[doc(hidden)]
pub mod failpoint;
mod files;
mod foreign;
#[doc(hidden)]
pub mod gc;
pub mod image;
mod install;
mod interrupt;
mod journal;
mod layout;
pub mod manifest;
mod progress;
mod pull;
mod push;
mod query;
mod registry;
mod reindex;
pub mod remote;
mod remove;
mod rename;
#[doc(hidden)]
pub mod sample;
mod shared_home;
mod stage;
mod staged;
mod text;
mod verify;

pub use add::{AddOptions, AddReport};
pub use archive::{
    Chunk as TarChunk, Compression, ExportOptions, ExportReport, ExportTarget, ImportOptions,
    ImportReport, ImportSource, OpenedSource, ReadError, Selection, TarReader,
};
pub use digest::Digest;
pub use error::{Error, Result, exit};
pub use gc::{GcOptions, GcReport, Kept, KeptReason, KindTotal, Removal, RemovalKind};
pub use layout::SnapshotName;
pub use progress::{NoProgress, Progress};
pub use pull::{PullOptions, PullReport, Transfer};
pub use push::{PushOptions, PushReport, PushedImage, PushedSnapshot};
pub use query::{LineageEntry, ListEntry, ShowReport, SqlResult, sql};
pub use registry::Registry;
pub use reindex::{ReindexReport, Skipped};
pub use remove::RemoveReport;
pub use rename::RenameReport;
pub use verify::{Problem, ProblemKind, UnfinishedImport, VerifyReport};
