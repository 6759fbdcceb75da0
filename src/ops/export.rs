//! `export`: write a snapshot (with its chain and image artifacts on
//! request) as a deterministic, verified archive (DESIGN §2, §4).
//!
//! Three steps: the plan, from the index only ([`plan`]); the
//! opening of every planned file, which checks presence and size before any
//! output exists; then the stream ([`crate::archive::export_stream`]) through zstd (or none)
//! into a temporary file beside the target that is fsynced and renamed only
//! when complete, or into stdout. Same snapshot, same options: same bytes —
//! headers are fixed ([`crate::archive::tar`]) and zstd's multithreaded output does
//! not depend on the number of workers or on how the input was chunked.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use async_compression::Level;
use async_compression::tokio::write::ZstdEncoder;
use async_compression::zstd::CParameter;
use serde::Serialize;
use tokio::io::{AsyncWrite, BufWriter};

pub mod plan;

use crate::archive::export_stream::{MemberWriter, OpenedFile};
use crate::model::digest::Digest;
use crate::model::error::{Error, IoContext, Result};
use crate::ops::registry::Registry;
use crate::process::progress::Progress;
use crate::store::files::{CHUNK, changed_at, fsync_dir, start_writeback};
use plan::{ExportPlan, PlannedFile, PlannedSignature, Selection};

/// Compression level used when none is given.
pub const DEFAULT_LEVEL: i32 = 3;

/// The compression levels `--level` accepts.
pub const LEVELS: std::ops::RangeInclusive<i32> = 1..=19;

/// Input bytes per zstd worker job. zstd's default at level 3 (8 MiB jobs
/// plus their output and overlap buffers, per worker) makes the process
/// peak at ~85 MiB; 3 MiB jobs keep it near 50 MiB, within the 64 MiB
/// budget, at no measurable cost in time or ratio. Fixed, so the output
/// stays deterministic.
pub const ZSTD_JOB_SIZE: u32 = 3 << 20;

/// How the tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// One zstd frame at this level (1–19), compressed on all cores.
    Zstd(i32),
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(DEFAULT_LEVEL)
    }
}

/// Options of `export`.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Which snapshots and artifacts to include.
    pub selection: Selection,
    /// Compression of the stream.
    pub compression: Compression,
    /// Regular entries only, holes written as zeros (for older loaders).
    pub dense: bool,
}

/// Where the archive goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTarget {
    /// A file, replaced atomically when the archive is complete.
    File(PathBuf),
    /// Standard output, streamed.
    Stdout,
}

impl ExportTarget {
    /// `-` is stdout, anything else a file path.
    pub fn from_arg(arg: &Path) -> Self {
        if arg == Path::new("-") {
            ExportTarget::Stdout
        } else {
            ExportTarget::File(arg.to_path_buf())
        }
    }

    fn display(&self) -> String {
        match self {
            ExportTarget::File(p) => p.display().to_string(),
            ExportTarget::Stdout => "-".into(),
        }
    }
}

/// What `export` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// The archive path, or `-` for stdout.
    pub archive: String,
    /// Archive bytes written (after compression).
    pub bytes: u64,
    /// Snapshots in the archive, root first.
    pub snapshots: Vec<Digest>,
    /// The snapshot asked for (the last one).
    pub head: Digest,
    /// Cache files in the archive, as `<kind>/<file>`.
    pub cache_files: Vec<String>,
    /// The parent the archive's first snapshot names but does not hold: the
    /// archive is not self-contained and imports only where that parent is
    /// (a `--base` export) or shallow; null when self-contained.
    pub missing_parent: Option<Digest>,
}

impl Registry {
    /// Export `reference` to `target`, verifying every file as it streams.
    pub fn export(
        &self,
        reference: &str,
        opts: &ExportOptions,
        target: &ExportTarget,
        progress: &dyn Progress,
    ) -> Result<ExportReport> {
        if let Compression::Zstd(level) = opts.compression
            && !LEVELS.contains(&level)
        {
            return Err(Error::Usage(format!(
                "compression level {level} is out of range 1-19"
            )));
        }
        if let ExportTarget::File(path) = target {
            self.layout().refuse_output_inside(path)?;
        }
        let plan = self.export_plan(reference, &opts.selection)?;
        crate::process::failpoint::hit(crate::process::failpoint::EXPORT_PLANNED)?;
        let written = self.write_plan(&plan, opts, target, progress);
        match written {
            Ok(bytes) => Ok(report(plan, target, bytes)),
            Err(e) => Err(self.removed_while_exporting(reference, &plan).unwrap_or(e)),
        }
    }

    /// Write the files `plan` names to `target`. Every file is checked (type,
    /// presence, size) before the first byte is written, then closed: only
    /// the file being written is held open, so a chain of any length fits in
    /// a small descriptor limit.
    fn write_plan(
        &self,
        plan: &ExportPlan,
        opts: &ExportOptions,
        target: &ExportTarget,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let mut total = 0;
        for p in &plan.files {
            total += OpenedFile::open(p)?.content_bytes(opts.dense);
        }
        let files = Files {
            planned: &plan.files,
            signatures: if opts.dense { &[] } else { &plan.signatures },
            total,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .at("start runtime for", target.display())?;
        runtime.block_on(write_target(&files, opts, target, progress))
    }

    /// When an export failed, whether that is because a snapshot it was
    /// writing has since been removed (a race with `rm`, not corruption).
    fn removed_while_exporting(&self, reference: &str, plan: &ExportPlan) -> Option<Error> {
        let conn = self.db().conn();
        let gone = plan
            .snapshots
            .iter()
            .find(|d| matches!(crate::db::snapshots::snapshot_by_digest(conn, d), Ok(None)))?;
        Some(Error::NotFound {
            what: "snapshot",
            reference: format!("{reference}: {gone} was removed while exporting"),
        })
    }
}

fn report(plan: ExportPlan, target: &ExportTarget, bytes: u64) -> ExportReport {
    ExportReport {
        archive: target.display(),
        bytes,
        snapshots: plan.snapshots,
        head: plan.head,
        cache_files: plan.cache_files,
        missing_parent: plan.missing_parent,
    }
}

/// The planned files of an export and their content bytes, opened one at a
/// time as they are written.
struct Files<'a> {
    planned: &'a [PlannedFile],
    signatures: &'a [PlannedSignature],
    total: u64,
}

async fn write_target(
    files: &Files<'_>,
    opts: &ExportOptions,
    target: &ExportTarget,
    progress: &dyn Progress,
) -> Result<u64> {
    let path = match target {
        ExportTarget::Stdout => {
            let written = write_archive(
                files,
                opts,
                tokio::io::stdout(),
                None,
                Path::new("-"),
                progress,
            );
            return tokio::select! {
                r = written => r,
                e = crate::process::interrupt::wait() => Err(e),
            };
        }
        ExportTarget::File(path) => path,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("output {} is not a file path", path.display())))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if path.is_dir() {
        return Err(Error::Usage(format!(
            "output {} is a directory; give the archive's file name",
            path.display()
        )));
    }
    if !dir.is_dir() {
        return Err(Error::NotFound {
            what: "output directory",
            reference: dir.display().to_string(),
        });
    }
    let prefix = format!(".{}.", file_name.to_string_lossy());
    remove_stale_partials(dir, &prefix);
    let temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(PARTIAL_SUFFIX)
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .at("create temporary file in", dir)?;
    temp.as_file().lock().at("lock", temp.path())?;
    let out = temp.as_file().try_clone().at("open", temp.path())?;
    let written = write_archive(
        files,
        opts,
        tokio::fs::File::from_std(out),
        Some(temp.as_file()),
        temp.path(),
        progress,
    );
    let bytes = match tokio::select! {
        r = written => r,
        e = crate::process::interrupt::wait() => Err(e),
    } {
        Err(Error::Interrupted { signal, .. }) => return Err(interrupted(temp, path, signal)),
        r => r?,
    };
    temp.as_file().sync_all().at("fsync", temp.path())?;
    crate::process::failpoint::hit(crate::process::failpoint::EXPORT_BEFORE_RENAME)?;
    if let Some(signal) = crate::process::interrupt::pending() {
        return Err(interrupted(temp, path, signal));
    }
    temp.persist(path)
        .map_err(|e| Error::io("rename onto", path, e.error))?;
    fsync_dir(dir)?;
    Ok(bytes)
}

/// Remove the partial archive of an export stopped by `signal`, and say so.
fn interrupted(temp: tempfile::NamedTempFile, target: &Path, signal: i32) -> Error {
    let partial = temp.path().display().to_string();
    let size = temp.as_file().metadata().map_or(0, |m| m.len());
    let cleaned = match temp.close() {
        Ok(()) => format!(
            "removed the partial archive {partial} ({size} bytes written); {} was not written",
            target.display()
        ),
        Err(e) => format!("could not remove the partial archive {partial}: {e}"),
    };
    Error::Interrupted { signal, cleaned }
}

/// How an export's temporary file beside its target ends.
const PARTIAL_SUFFIX: &str = ".partial";

/// A temporary file left this long untouched, with no export holding its
/// lock, was left by a killed export.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Remove what killed exports to the same target left in `dir`: files named
/// `<prefix><6 chars>.partial` that no export holds locked (a live one locks
/// its file for its whole run) and that nobody wrote to for a minute (which
/// covers the instant between a file's creation and its lock; a future
/// modification time, from clock skew, falls back to the change time). Best effort:
/// whatever cannot be checked or removed is left alone.
fn remove_stale_partials(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_ours = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(PARTIAL_SUFFIX))
            .is_some_and(|random| {
                random.len() == 6 && random.bytes().all(|b| b.is_ascii_alphanumeric())
            });
        if !is_ours {
            continue;
        }
        let path = entry.path();
        let Ok(file) = crate::store::files::open_regular(&path) else {
            continue;
        };
        let now = crate::db::now_unix();
        let stale = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .is_some_and(|m| now - changed_at(&m, now) >= STALE_AFTER.as_secs() as i64);
        if stale && file.try_lock().is_ok() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Stream the whole archive into `out`; returns the bytes written to it.
async fn write_archive<W: AsyncWrite + Unpin + Send>(
    files: &Files<'_>,
    opts: &ExportOptions,
    out: W,
    writeback: Option<&File>,
    out_name: &Path,
    progress: &dyn Progress,
) -> Result<u64> {
    let counter = Arc::new(AtomicU64::new(0));
    let counted = Counted {
        inner: out,
        count: counter.clone(),
        writeback,
        unflushed: 0,
    };
    let sink: Pin<Box<dyn AsyncWrite + Send + '_>> = match opts.compression {
        Compression::None => Box::pin(BufWriter::with_capacity(CHUNK, counted)),
        Compression::Zstd(level) => Box::pin(ZstdEncoder::with_quality_and_params(
            BufWriter::with_capacity(CHUNK, counted),
            Level::Precise(level),
            &[
                CParameter::nb_workers(workers()),
                CParameter::job_size(ZSTD_JOB_SIZE),
            ],
        )),
    };
    progress.start("export", Some(files.total));
    let mut writer = MemberWriter::new(sink, out_name, opts.dense, progress);
    for p in files.planned {
        writer.member(&OpenedFile::open(p)?).await?;
    }
    for s in files.signatures {
        writer.small(&s.member, &s.bytes, s.mtime).await?;
    }
    writer.finish().await?;
    progress.finish();
    Ok(counter.load(Ordering::Relaxed))
}

fn workers() -> u32 {
    u32::try_from(crate::process::threads::available()).unwrap_or(u32::MAX)
}

/// Written bytes after which the kernel is asked to start writing the
/// output back, so the final fsync has little left to wait for.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// Counts the bytes its inner writer accepted, and starts writeback of the
/// output file as it grows.
struct Counted<'f, W> {
    inner: W,
    count: Arc<AtomicU64>,
    writeback: Option<&'f File>,
    unflushed: u64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counted<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.count.fetch_add(n as u64, Ordering::Relaxed);
            self.unflushed += n as u64;
            if self.unflushed >= WRITEBACK_EVERY
                && let Some(file) = self.writeback
            {
                start_writeback(file);
                self.unflushed = 0;
            }
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
