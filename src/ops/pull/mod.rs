//! `pull`: a snapshot and the ancestors the registry lacks, from an OCI
//! registry (docs/oci.md). Every chunk found locally (any
//! snapshot, through the chunk index) is copied; only the rest is
//! downloaded. Files are assembled in the lease's staging (holes stay
//! holes), hashed in place as `add` hashes, and installed by the same
//! journaled install as import: all or nothing.
//!
//! An interrupted pull (a dropped connection, kill -9) leaves its lease's
//! staging behind; the next pull of the same manifest adopts it and keeps
//! every chunk already written. gc keeps such staging for its grace period.
//!
//! By step: `resolve` (manifests, configs, chunk maps), `assemble` (files
//! in staging from what is here and `transfer`'s downloads; `local` finds
//! chunks already on this machine), `verify` (hash in place against the
//! map) and `install` (names, image artifacts, the journaled install).

mod assemble;
mod install;
mod local;
mod report;
mod resolve;
mod transfer;
mod verify;

use std::collections::HashSet;

pub use self::report::{PullOptions, PullReport, Transfer};
use self::resolve::RemoteSnapshot;
use crate::db::{self, ImportState};
use crate::journal::Lease;
use crate::model::digest::Digest;
use crate::model::error::{Error, IoContext, Result};
use crate::ops::registry::Registry;
use crate::process::progress::Progress;
use crate::remote::{Client, RemoteRef};
use crate::store::layout::SnapshotName;

impl Registry {
    /// Pull `source` (a tag or manifest digest) into this registry.
    pub fn pull(
        &mut self,
        source: &RemoteRef,
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<PullReport> {
        let reference = source.manifest_reference().ok_or_else(|| {
            Error::Usage(format!(
                "{source}: give the snapshot to pull as REPOSITORY:TAG or REPOSITORY@sha256:HEX"
            ))
        })?;
        let head_name = opts.name.as_deref().map(SnapshotName::chosen).transpose()?;
        let client = Client::new(&source.registry, &opts.client)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .at("start", "the async runtime")?;
        let mut transfer = Transfer::default();
        let (chain, head, manifest_digest) =
            runtime.block_on(self.resolve_chain(&client, source, &reference, &mut transfer))?;
        let mut report = PullReport {
            head,
            name: String::new(),
            manifest_digest,
            imported: Vec::new(),
            skipped: Vec::new(),
            transfer,
            image_files_installed: 0,
            microsandbox_hint: None,
        };
        if chain.is_empty() {
            let row =
                db::snapshots::snapshot_by_digest(self.db().conn(), &head)?.ok_or_else(|| {
                    Error::NotFound {
                        what: "snapshot",
                        reference: head.to_string(),
                    }
                })?;
            report.name = match head_name {
                // As import does: a head already here takes the name asked for.
                Some(n) if n.as_str() != row.name => {
                    self.rename(&head.to_string(), n.as_str())?.name
                }
                _ => row.name,
            };
            report.skipped.push(head);
            return Ok(report);
        }
        let key = format!(
            "{}{}@{manifest_digest}",
            db::gc::PULL_SOURCE_PREFIX,
            source.repository_name()
        );
        let mut lease = self.pull_lease(&key)?;
        let result = runtime.block_on(self.pull_leased(
            &client,
            source,
            &mut lease,
            &chain,
            head_name.as_ref(),
            opts,
            &mut report,
            progress,
        ));
        match &result {
            // What was downloaded stays for the rerun to resume from.
            Err(e) if resumable(e) => lease.release(),
            Ok(_) => lease.finish(self.db_mut(), ImportState::Done, None)?,
            Err(e) => {
                let message = e.with_causes();
                lease.finish(self.db_mut(), ImportState::Failed, Some(&message))?;
            }
        }
        result?;
        Ok(report)
    }

    /// The lease of an interrupted pull of the same manifest, or a new one.
    fn pull_lease(&mut self, key: &str) -> Result<Lease> {
        let (layout, db) = self.parts();
        for row in db::imports::imports_in_states(db.conn(), &[ImportState::Staging])? {
            if row.source == key
                && let Some(lease) = Lease::adopt(layout, db, &row.id)?
            {
                return Ok(lease);
            }
        }
        Lease::acquire(layout, db, key)
    }

    #[allow(clippy::too_many_arguments)]
    async fn pull_leased(
        &mut self,
        client: &Client,
        source: &RemoteRef,
        lease: &mut Lease,
        chain: &[RemoteSnapshot],
        head_name: Option<&SnapshotName>,
        opts: &PullOptions,
        report: &mut PullReport,
        progress: &dyn Progress,
    ) -> Result<()> {
        let jobs = if opts.jobs == 0 {
            crate::ops::push::DEFAULT_JOBS
        } else {
            opts.jobs
        };
        let max_file = opts
            .max_file_bytes
            .unwrap_or(crate::archive::entry::DEFAULT_MAX_FILE_BYTES);
        let images: HashSet<Digest> = chain
            .iter()
            .map(|s| s.parsed.manifest.image.manifest_digest)
            .collect();
        for image in &images {
            db::imports::insert_pin(self.db().conn(), lease.id(), image)?;
        }
        let maps = self
            .assemble_chain(
                client,
                source.repository.as_str(),
                lease,
                chain,
                jobs,
                max_file,
                &mut report.transfer,
                progress,
            )
            .await?;
        crate::process::failpoint::hit(crate::process::failpoint::PULL_ASSEMBLED)?;
        self.install_pulled(
            client, source, lease, chain, head_name, &images, &maps, report, progress,
        )
        .await
    }
}

/// Whether a failed pull's downloads are worth keeping for a rerun.
fn resumable(e: &Error) -> bool {
    matches!(
        e,
        Error::Remote { .. }
            | Error::RemoteAuth { .. }
            | Error::Failpoint(_)
            | Error::Interrupted { .. }
    ) || e.is_storage()
}
