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
mod follow;
mod install;
mod local;
mod report;
mod resolve;
mod transfer;
mod verify;

use std::collections::HashSet;

pub use self::report::{PullOptions, PullReport, Transfer};
use self::resolve::RemoteSnapshot;
use crate::db::signatures::SignatureRow;
use crate::db::{self, ImportState};
use crate::journal::Lease;
use crate::model::digest::Digest;
use crate::model::error::{Error, IoContext, Result};
use crate::ops::registry::Registry;
use crate::ops::sign::{Arriving, admit};
use crate::process::progress::Progress;
use crate::remote::signatures::fetch_signatures;
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
        crate::process::timeline::mark("pull: start");
        let reference = source.manifest_reference().ok_or_else(|| {
            Error::Usage(format!(
                "{source}: give the snapshot to pull as REPOSITORY:TAG or REPOSITORY@sha256:HEX"
            ))
        })?;
        let head_name = opts.name.as_deref().map(SnapshotName::chosen).transpose()?;
        let client = Client::new(&source.registry, &opts.client)?;
        crate::process::timeline::mark("pull: client ready");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .at("start", "the async runtime")?;
        let mut transfer = Transfer::default();
        let resolve = self.resolve_chain(
            &client,
            source,
            &reference,
            head_name.as_ref(),
            opts.repair,
            &mut transfer,
        );
        let (chain, head, manifest_digest) = interruptible(&runtime, resolve)?;
        crate::process::timeline::mark("pull: chain resolved");
        let mut report = PullReport {
            head,
            name: String::new(),
            manifest_digest,
            imported: Vec::new(),
            skipped: Vec::new(),
            transfer,
            image_files_installed: 0,
            name_fallbacks: Vec::new(),
            repaired: Vec::new(),
            microsandbox_hint: None,
        };
        if chain.is_empty() {
            report.name = self.name_present(&head, head_name.as_ref())?;
            report.skipped.push(head);
            return Ok(report);
        }
        let signatures = runtime.block_on(self.pulled_signatures(&client, source, &chain, opts))?;
        crate::process::timeline::mark("pull: signatures checked");
        let pulled = Pulled {
            client: &client,
            source,
            chain: &chain,
            head_name: head_name.as_ref(),
            opts,
        };
        self.pull_chain(&runtime, &pulled, signatures, &mut report, progress)?;
        crate::process::timeline::mark("pull: done");
        Ok(report)
    }

    /// Assemble and install `pulled.chain` under a lease (an interrupted
    /// pull's of the same manifest, adopted, or a new one), which keeps
    /// what was downloaded when the failure is one a rerun can get past.
    fn pull_chain(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        pulled: &Pulled<'_>,
        signatures: Vec<SignatureRow>,
        report: &mut PullReport,
        progress: &dyn Progress,
    ) -> Result<()> {
        let key = format!(
            "{}{}@{}",
            db::gc::PULL_SOURCE_PREFIX,
            pulled.source.repository_name(),
            report.manifest_digest
        );
        let images: HashSet<Digest> = pulled
            .chain
            .iter()
            .map(|s| s.parsed.manifest.image.manifest_digest)
            .collect();
        let mut lease = self.pull_lease(&key, &images)?;
        crate::process::timeline::mark("pull: lease held");
        let leased = self.pull_leased(pulled, &mut lease, &images, signatures, report, progress);
        let result = interruptible(runtime, leased);
        match &result {
            // What was downloaded stays for the rerun to resume from.
            Err(e) if resumable(e) => lease.release(),
            Ok(_) => lease.finish(self.db_mut(), ImportState::Done, None)?,
            Err(e) => {
                let message = e.with_causes();
                lease.finish(self.db_mut(), ImportState::Failed, Some(&message))?;
            }
        }
        result
    }

    /// The name of `head`, already here: the one asked for (as import
    /// does, a head already here takes it), else its own.
    fn name_present(&mut self, head: &Digest, head_name: Option<&SnapshotName>) -> Result<String> {
        let row = db::snapshots::snapshot_by_digest(self.db().conn(), head)?.ok_or_else(|| {
            Error::NotFound {
                what: "snapshot",
                reference: head.to_string(),
            }
        })?;
        Ok(match head_name {
            Some(n) if n.as_str() != row.name => self.rename(&head.to_string(), n.as_str())?.name,
            _ => row.name,
        })
    }

    /// A `--name` taken by another snapshot is refused before any chunk
    /// map or pack is downloaded (install would refuse it after): checked
    /// while the chain is resolved.
    fn check_name_free(&self, head: &Digest, head_name: Option<&SnapshotName>) -> Result<()> {
        if let Some(n) = head_name
            && let Some(other) = db::snapshots::snapshot_by_name(self.db().conn(), n.as_str())?
            && other.digest != *head
        {
            return Err(Error::conflict(
                format!("snapshot name {n}"),
                format!("already names {}, not {head}", other.digest),
            ));
        }
        Ok(())
    }

    /// The lease of an interrupted pull of the same manifest, or a new one,
    /// pinning `images` (in the same commit as a new lease's row).
    fn pull_lease(&mut self, key: &str, images: &HashSet<Digest>) -> Result<Lease> {
        let (layout, db) = self.parts();
        let images: Vec<Digest> = images.iter().copied().collect();
        for row in db::imports::imports_in_states(db.conn(), &[ImportState::Staging])? {
            if row.source == key
                && let Some(lease) = Lease::adopt(layout, db, &row.id)?
            {
                for image in &images {
                    db::imports::insert_pin(db.conn(), lease.id(), image)?;
                }
                return Ok(lease);
            }
        }
        Lease::acquire_pinned(layout, db, key, &images)
    }

    /// Assemble every snapshot of the chain in the lease's staging, then
    /// check and install them.
    async fn pull_leased(
        &mut self,
        pulled: &Pulled<'_>,
        lease: &mut Lease,
        images: &HashSet<Digest>,
        signatures: Vec<SignatureRow>,
        report: &mut PullReport,
        progress: &dyn Progress,
    ) -> Result<()> {
        let opts = pulled.opts;
        let jobs = if opts.jobs == 0 {
            crate::ops::push::DEFAULT_JOBS
        } else {
            opts.jobs
        };
        let max_file = opts
            .max_file_bytes
            .unwrap_or(crate::archive::entry::DEFAULT_MAX_FILE_BYTES);
        let mut maps = self
            .assemble_chain(
                pulled.client,
                pulled.source.repository.as_str(),
                lease,
                pulled.chain,
                jobs,
                max_file,
                &mut report.transfer,
                progress,
            )
            .await?;
        crate::process::failpoint::hit(crate::process::failpoint::PULL_ASSEMBLED)?;
        self.install_pulled(
            pulled.client,
            pulled.source,
            lease,
            pulled.chain,
            pulled.head_name,
            images,
            &mut maps,
            signatures,
            opts.repair,
            report,
            progress,
        )
        .await
    }

    /// The signatures the repository holds for each snapshot of `chain`,
    /// checked against the policy before a byte of content is downloaded:
    /// a signature that does not verify refuses the pull, as does a
    /// snapshot the trust files require signed that no allowed key covers.
    async fn pulled_signatures(
        &self,
        client: &Client,
        source: &RemoteRef,
        chain: &[RemoteSnapshot],
        opts: &PullOptions,
    ) -> Result<Vec<SignatureRow>> {
        let trusts = self.trust_policy(&opts.trust)?;
        let mut found = Vec::new();
        for s in chain {
            found.push(fetch_signatures(client, &source.repository, &s.parsed.digest).await?);
        }
        let arriving: Vec<Arriving> = chain
            .iter()
            .zip(&found)
            .map(|(s, signatures)| Arriving {
                digest: s.parsed.digest,
                parent: s.parsed.manifest.parent,
                signatures,
            })
            .collect();
        admit(self.db().conn(), &trusts, &arriving)
    }
}

/// What a pull fetches and from where, as the command gave it.
struct Pulled<'a> {
    client: &'a Client,
    source: &'a RemoteRef,
    /// The snapshots to pull, parents first.
    chain: &'a [RemoteSnapshot],
    /// `--name` for the head.
    head_name: Option<&'a SnapshotName>,
    opts: &'a PullOptions,
}

/// Run `work` on `runtime` until it ends or the process is interrupted
/// (Ctrl-C, SIGTERM), saying what an interruption left.
fn interruptible<T>(
    runtime: &tokio::runtime::Runtime,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    runtime
        .block_on(async {
            tokio::select! {
                r = work => r,
                e = crate::process::interrupt::wait() => Err(e),
            }
        })
        .map_err(explain_interrupt)
}

/// An interrupted pull says what is left: nothing installed, and what
/// was downloaded kept for the rerun.
fn explain_interrupt(e: Error) -> Error {
    match e {
        Error::Interrupted { signal, .. } => Error::Interrupted {
            signal,
            cleaned: "nothing was installed; what was downloaded stays in staging and a rerun resumes from it".into(),
        },
        e => e,
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
