//! `import`: an archive (file or stdin, zstd or plain tar) into the
//! registry, all or nothing. The flow of DESIGN §4 and §5: take a lease,
//! check every header against the grammar before its data is written,
//! stream each file into `staging/<id>/` while hashing it, record the staged
//! files in one transaction, verify the whole set ([`super::check`]), then
//! hand it to [`install`], which checks compatibility and promotes under the
//! journal.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::check::{self, CheckedSet};
use super::entry::{MANIFEST_FILE, Member, MemberSet, classify};
use super::import_source::{self, Budget, Budgeted, OpenedSource, OverBudget, Pump, PumpError};
use super::streamed::{StagedMember, Streamed, StreamedSnapshot};
use crate::db::{self, ImportState};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::failpoint;
use crate::files::{CHUNK, Piece, is_zero};
use crate::image::{CacheFile, MAX_METADATA_BYTES};
use crate::install::install;
use crate::journal::Lease;
use crate::layout::{Layout, SnapshotName};
use crate::manifest::{Integrity, MAX_MANIFEST_BYTES, Manifest};
use crate::progress::Progress;
use crate::registry::Registry;
use crate::stage::{StagedBytes, StagingFile};

pub use super::import_source::ImportSource;

/// Options of `import`.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Name for the head snapshot; the others are named by their archive
    /// prefix. A head already present under another name is renamed to it.
    pub name: Option<String>,
    /// Accept an archive whose first snapshot's parent is neither in the
    /// archive nor in the registry (the snapshots land shallow); refused
    /// otherwise, naming the missing base.
    pub allow_shallow: bool,
}

/// What `import` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// The archive's head: the last snapshot that is no other's parent.
    pub head: Digest,
    /// The head's name in the registry.
    pub name: String,
    /// Snapshots newly installed, parents first.
    pub imported: Vec<Digest>,
    /// Snapshots that were already present, left as they were.
    pub skipped: Vec<Digest>,
    /// Cache files newly installed.
    pub cache_files_installed: usize,
    /// Cache files already present with the same content.
    pub cache_files_skipped: usize,
    /// In a shared home whose snapshots this changed: how to refresh
    /// microsandbox's view (`msb snapshot reindex`); null otherwise.
    pub microsandbox_hint: Option<String>,
}

impl Registry {
    /// Import an archive: everything in it lands, or nothing does.
    pub fn import(
        &mut self,
        source: &ImportSource,
        opts: &ImportOptions,
        progress: &dyn Progress,
    ) -> Result<ImportReport> {
        let head_name = opts.name.as_deref().map(SnapshotName::chosen).transpose()?;
        let opened = import_source::open(source)?;
        let (layout, db) = self.parts();
        let lease = Lease::acquire(layout, db, &source.label())?;
        let result = self
            .import_leased(
                &lease,
                source,
                opened,
                head_name,
                opts.allow_shallow,
                progress,
            )
            .map_err(|e| e.naming_archive(&source.display_name()));
        let (state, message) = match &result {
            Ok(_) => (ImportState::Done, None),
            Err(e) => (ImportState::Failed, Some(e.with_causes())),
        };
        let finished = lease.finish(self.db_mut(), state, message.as_deref());
        let report = result?;
        finished?;
        Ok(report)
    }

    fn import_leased(
        &mut self,
        lease: &Lease,
        source: &ImportSource,
        opened: OpenedSource,
        head_name: Option<SnapshotName>,
        allow_shallow: bool,
        progress: &dyn Progress,
    ) -> Result<ImportReport> {
        let layout = self.layout().clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .at("start runtime for", source.label())?;
        progress.start("import", opened.len);
        let streamed = runtime.block_on(read_archive(
            &layout,
            self.db().conn(),
            lease.id(),
            source,
            opened,
            progress,
        ));
        runtime.shutdown_background();
        progress.finish();
        let streamed = streamed?;
        failpoint::hit(failpoint::IMPORT_STREAMED)?;

        let head = check::head(&streamed.snapshots)?;
        if !allow_shallow {
            check::base_present(self.db().conn(), &streamed.snapshots)?;
        }
        let names = streamed
            .snapshots
            .iter()
            .enumerate()
            .map(|(i, s)| match (&head_name, i == head) {
                (Some(n), true) => Ok(n.clone()),
                _ => s.prefix.parse::<SnapshotName>(),
            })
            .collect::<Result<Vec<_>>>()?;
        record(self, lease, &streamed, &names)?;
        failpoint::hit(failpoint::IMPORT_RECORDED)?;

        let checked: CheckedSet = check::verify(&layout, &streamed, &names)?;
        failpoint::hit(failpoint::IMPORT_VERIFIED)?;

        let head_row = &streamed.snapshots[head];
        let present = db::snapshots::snapshot_by_digest(self.db().conn(), &head_row.parsed.digest)?;
        let rename_to = head_name.filter(|n| present.is_some_and(|r| r.name != n.as_str()));
        if let Some(wanted) = &rename_to
            && let Some(other) = db::snapshots::snapshot_by_name(self.db().conn(), wanted.as_str())?
        {
            return Err(Error::Conflict {
                subject: wanted.to_string(),
                detail: format!(
                    "the head {} is already here under another name, and the name is taken by snapshot {}",
                    head_row.parsed.digest, other.digest
                ),
            });
        }
        if let Some(wanted) = &rename_to
            && layout.snapshot(wanted).symlink_metadata().is_ok()
        {
            return Err(Error::Conflict {
                subject: wanted.to_string(),
                detail: "snapshots/ holds a directory of that name without a row (debris; `gc` removes it)".into(),
            });
        }
        let outcome = install(self, lease, &checked.set)?;
        if let Some(wanted) = &rename_to {
            self.rename(&head_row.parsed.digest.to_string(), wanted.as_str())?;
        }
        let name = db::snapshots::snapshot_by_digest(self.db().conn(), &head_row.parsed.digest)?
            .map(|r| r.name)
            .unwrap_or_else(|| names[head].to_string());
        Ok(ImportReport {
            microsandbox_hint: if outcome.imported.is_empty() {
                None
            } else {
                crate::shared_home::reindex_hint(self.layout())
            },
            head: head_row.parsed.digest,
            name,
            imported: outcome.imported,
            skipped: outcome.skipped,
            cache_files_installed: outcome.cache_files_installed,
            cache_files_skipped: outcome.cache_files_skipped,
        })
    }
}

/// Record every staged file in one transaction: the import's lease on them.
fn record(
    registry: &mut Registry,
    lease: &Lease,
    streamed: &Streamed,
    names: &[SnapshotName],
) -> Result<()> {
    let layout = registry.layout().clone();
    let rel = |p: &Path| -> String {
        p.strip_prefix(layout.root())
            .expect("staging is under the root")
            .to_string_lossy()
            .into_owned()
    };
    let mut rows = Vec::new();
    for (s, name) in streamed.snapshots.iter().zip(names) {
        for (file, m) in &s.files {
            rows.push(db::ImportFileRow {
                member: m.member.clone(),
                staged_path: rel(&m.path),
                final_path: rel(&layout.snapshot_file(name, file)),
                kind: "snapshot".into(),
                size: m.bytes.size,
                digest: m.bytes.digest,
                promote: true,
            });
        }
    }
    for (file, m) in &streamed.cache {
        rows.push(db::ImportFileRow {
            member: m.member.clone(),
            staged_path: rel(&m.path),
            final_path: rel(&layout.cache_file(file)),
            kind: file.kind.as_str().into(),
            size: m.bytes.size,
            digest: m.bytes.digest,
            promote: true,
        });
    }
    let tx = registry.db_mut().write()?;
    db::imports::insert_import_files(&tx, lease.id(), &rows)?;
    tx.commit()?;
    Ok(())
}

/// Read the whole archive into staging; the decompressing worker's failure
/// takes precedence over the tar reader's, since it is the cause.
async fn read_archive(
    layout: &Layout,
    conn: &rusqlite::Connection,
    id: &str,
    source: &ImportSource,
    opened: OpenedSource,
    progress: &dyn Progress,
) -> Result<Streamed> {
    let (tar, pump) = Pump::start(opened);
    let budget = Rc::new(Budget::default());
    let mut reader = Budgeted::new(tar, budget.clone());
    let mut stager = Stager {
        layout,
        conn,
        id,
        pinned: HashSet::new(),
        members: MemberSet::default(),
        streamed: Streamed::default(),
        by_prefix: HashMap::new(),
        ticker: Ticker {
            consumed: pump.consumed.clone(),
            reported: 0,
            progress,
        },
        buf: vec![0u8; CHUNK],
        last: None,
    };
    let outcome = stager.run(&mut reader, &budget).await;
    let drained = match &outcome {
        Ok(()) => drain(&mut reader).await,
        Err(_) => Ok(()),
    };
    drop(reader);
    match pump.finish().await {
        Err(PumpError::Zstd(e)) => Err(zstd_error(e)),
        Err(PumpError::Read(e)) => Err(Error::io("read", source.label(), e)),
        Ok(_) => {
            outcome?;
            drained.map_err(|e| tar_error(&None, e))?;
            Ok(stager.streamed)
        }
    }
}

/// Why a zstd stream was refused. zstd reports a window above the limit as
/// a memory error; say which limit and how to meet it instead.
fn zstd_error(e: std::io::Error) -> Error {
    if e.to_string().contains("too much memory") {
        let mib = (1u64 << import_source::ZSTD_WINDOW_LOG_MAX) >> 20;
        Error::rejected_archive(format!(
            "zstd frame needs a window larger than {mib} MiB (compressed with --long?); \
             recompress with a window of at most {mib} MiB"
        ))
    } else {
        Error::unreadable_archive("corrupt or truncated zstd stream", e)
    }
}

/// Read what follows the end-of-archive marker, so a corrupt compressed
/// tail is noticed too.
async fn drain(rest: &mut (impl AsyncRead + Unpin)) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    while rest.read(&mut buf).await? > 0 {}
    Ok(())
}

/// Map a tar reader failure to a refusal of the archive.
fn tar_error(after: &Option<String>, e: std::io::Error) -> Error {
    let whence = match after {
        Some(m) => format!(" after member {m}"),
        None => String::new(),
    };
    if e.get_ref().is_some_and(|i| i.is::<OverBudget>()) {
        return Error::rejected_archive(format!("{e}{whence}"));
    }
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return Error::unreadable_archive(format!("truncated tar stream{whence}"), e);
    }
    Error::unreadable_archive(format!("corrupt tar stream{whence}"), e)
}

/// Reports compressed bytes consumed as progress.
struct Ticker<'a> {
    consumed: Arc<AtomicU64>,
    reported: u64,
    progress: &'a dyn Progress,
}

impl Ticker<'_> {
    fn tick(&mut self) {
        let now = self.consumed.load(Ordering::Relaxed);
        if now > self.reported {
            self.progress.advance(now - self.reported);
            self.reported = now;
        }
    }
}

struct Stager<'a> {
    layout: &'a Layout,
    /// For recording, as each manifest arrives, the image it pins.
    conn: &'a rusqlite::Connection,
    id: &'a str,
    /// Images already recorded in `import_pins`.
    pinned: HashSet<Digest>,
    members: MemberSet,
    streamed: Streamed,
    by_prefix: HashMap<String, usize>,
    ticker: Ticker<'a>,
    buf: Vec<u8>,
    last: Option<String>,
}

impl Stager<'_> {
    /// Read members until the end-of-archive marker.
    ///
    /// Each member is read through a fresh `tokio_tar::Archive` positioned
    /// at its header: astral-tokio-tar 0.7.0 keeps the extension-header
    /// state of a GNU sparse entry across entries, so a second sparse entry
    /// with extension headers in the same stream would be misread. The
    /// padding after each member is skipped here instead.
    async fn run(
        &mut self,
        reader: &mut Budgeted<tokio::io::DuplexStream>,
        budget: &Budget,
    ) -> Result<()> {
        loop {
            let pad = (512 - budget.position() % 512) % 512;
            let mut skip = [0u8; 512];
            reader
                .read_exact(&mut skip[..pad as usize])
                .await
                .map_err(|e| tar_error(&self.last, e))?;
            budget.arm();
            let mut archive = tokio_tar::Archive::new(&mut *reader);
            let mut entries = archive.entries().map_err(|e| tar_error(&None, e))?;
            let next = entries.next().await;
            let header_bytes = budget.disarm();
            let mut entry = match next {
                None if header_bytes >= 512 => return Ok(()),
                None => {
                    return Err(Error::rejected_archive(match &self.last {
                        Some(m) => format!(
                            "truncated tar stream: no end-of-archive marker after member {m}"
                        ),
                        None => {
                            "empty or truncated tar stream: no end-of-archive marker".to_string()
                        }
                    }));
                }
                Some(Err(e)) => return Err(tar_error(&self.last, e)),
                Some(Ok(entry)) => entry,
            };
            let member = {
                let path = entry.path_bytes().map_err(|e| tar_error(&self.last, e))?;
                let link = entry
                    .link_name_bytes()
                    .map_err(|e| tar_error(&self.last, e))?;
                classify(entry.header().entry_type(), link.as_deref(), &path)?
            };
            let member_path = member.path();
            no_pax_sparse(&mut entry, &member_path).await?;
            self.members.insert(&member)?;
            self.last = Some(member_path.clone());
            let size = entry.effective_size();
            let is_file = matches!(member, Member::SnapshotFile { .. } | Member::CacheFile(_));
            match member {
                Member::Root
                | Member::SnapshotDir { .. }
                | Member::CacheDir
                | Member::CacheKindDir(_) => {
                    if size != 0 {
                        return Err(Error::rejected(
                            member_path,
                            "a directory entry may not carry data",
                        ));
                    }
                }
                Member::SnapshotFile { prefix, file } if file == MANIFEST_FILE => {
                    self.manifest(&mut entry, member_path, prefix, size).await?;
                }
                Member::SnapshotFile { prefix, file } => {
                    self.snapshot_file(&mut entry, member_path, prefix, file, size)
                        .await?;
                }
                Member::CacheFile(file) => {
                    self.cache_file(&mut entry, member_path, file, size).await?;
                }
            }
            if is_file {
                failpoint::hit(failpoint::IMPORT_MEMBER_STAGED)?;
            }
            self.ticker.tick();
        }
    }

    async fn manifest(
        &mut self,
        entry: &mut (impl AsyncRead + Unpin),
        member: String,
        prefix: String,
        size: u64,
    ) -> Result<()> {
        if size > MAX_MANIFEST_BYTES {
            return Err(Error::rejected(
                member,
                format!("manifest is {size} bytes; the limit is 1 MiB"),
            ));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        (&mut *entry)
            .take(size)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| Error::unreadable(&member, "truncated or corrupt", e))?;
        if (bytes.len() as u64) < size {
            return Err(truncated(&member, bytes.len() as u64, size));
        }
        let parsed = Manifest::parse(&bytes).map_err(|source| Error::Manifest {
            path: member.clone(),
            source,
        })?;
        let expected = parsed.digest.archive_prefix();
        if expected != prefix {
            return Err(Error::integrity(
                member,
                format!(
                    "manifest digest is {}, so its directory must be {expected}, not {prefix}",
                    parsed.digest
                ),
            ));
        }
        let image = parsed.manifest.image.manifest_digest;
        if self.pinned.insert(image) {
            db::imports::insert_pin(self.conn, self.id, &image)?;
        }
        let dir = self.layout.staged_snapshot(self.id, &prefix);
        std::fs::create_dir_all(&dir).at("create directory", &dir)?;
        let path = dir.join(MANIFEST_FILE);
        let mut out = StagingFile::create(&path, size, None)?;
        out.piece(Piece::Data(&bytes))?;
        let staged = out.finish()?;
        self.by_prefix
            .insert(prefix.clone(), self.streamed.snapshots.len());
        self.streamed.snapshots.push(StreamedSnapshot {
            prefix,
            parsed,
            dir,
            files: vec![(
                MANIFEST_FILE.to_string(),
                StagedMember {
                    member,
                    path,
                    bytes: staged,
                },
            )],
        });
        Ok(())
    }

    async fn snapshot_file(
        &mut self,
        entry: &mut (impl AsyncRead + Unpin),
        member: String,
        prefix: String,
        file: String,
        size: u64,
    ) -> Result<()> {
        let Some(&index) = self.by_prefix.get(&prefix) else {
            return Err(Error::rejected(
                member,
                format!(
                    "comes before {prefix}/{MANIFEST_FILE}; the manifest must be the first member of its snapshot directory"
                ),
            ));
        };
        let snapshot = &self.streamed.snapshots[index];
        let upper = &snapshot.parsed.manifest.upper;
        let integrity = if file == upper.file {
            if size != upper.size_bytes {
                return Err(Error::integrity(
                    member,
                    format!(
                        "size is {size} bytes, manifest records {}",
                        upper.size_bytes
                    ),
                ));
            }
            upper.integrity.clone()
        } else {
            None
        };
        let path = snapshot.dir.join(&file);
        let bytes = self
            .stage(entry, &member, &path, size, integrity.as_ref())
            .await?;
        self.streamed.snapshots[index].files.push((
            file,
            StagedMember {
                member,
                path,
                bytes,
            },
        ));
        Ok(())
    }

    async fn cache_file(
        &mut self,
        entry: &mut (impl AsyncRead + Unpin),
        member: String,
        file: CacheFile,
        size: u64,
    ) -> Result<()> {
        if file.kind == crate::image::CacheKind::Manifests && size > MAX_METADATA_BYTES {
            return Err(Error::rejected(
                member,
                format!("image metadata is {size} bytes; the limit is 16 MiB"),
            ));
        }
        let path = self.layout.staged_cache_file(self.id, &file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).at("create directory", parent)?;
        }
        let bytes = self.stage(entry, &member, &path, size, None).await?;
        self.streamed.cache.push((
            file,
            StagedMember {
                member,
                path,
                bytes,
            },
        ));
        Ok(())
    }

    /// Stream one member's data into `path`, hashing it on the way; runs of
    /// zeros become holes.
    async fn stage(
        &mut self,
        entry: &mut (impl AsyncRead + Unpin),
        member: &str,
        path: &Path,
        size: u64,
        integrity: Option<&Integrity>,
    ) -> Result<StagedBytes> {
        let mut out = StagingFile::create(path, size, integrity)?;
        let mut done = 0u64;
        while done < size {
            let want = (size - done).min(self.buf.len() as u64) as usize;
            let mut filled = 0;
            while filled < want {
                let n = match entry.read(&mut self.buf[filled..want]).await {
                    Ok(0) => return Err(truncated(member, done + filled as u64, size)),
                    Ok(n) => n,
                    Err(e) => {
                        return Err(Error::unreadable(
                            member,
                            format!(
                                "truncated or corrupt after {} of {size} bytes",
                                done + filled as u64
                            ),
                            e,
                        ));
                    }
                };
                filled += n;
            }
            let chunk = &self.buf[..filled];
            out.piece(if is_zero(chunk) {
                Piece::Zeros(filled as u64)
            } else {
                Piece::Data(chunk)
            })?;
            done += filled as u64;
            self.ticker.tick();
        }
        out.finish()
    }
}

fn truncated(member: &str, got: u64, size: u64) -> Error {
    Error::rejected(
        member,
        format!("truncated: the stream ends after {got} of {size} bytes"),
    )
}

/// pax `GNU.sparse.*` records (sparse formats 0.x/1.0) are not part of the
/// format: export writes old GNU sparse headers, which the reader decodes.
async fn no_pax_sparse<R: AsyncRead + Unpin>(
    entry: &mut tokio_tar::Entry<R>,
    member: &str,
) -> Result<()> {
    let Some(records) = entry
        .pax_extensions()
        .await
        .map_err(|e| Error::unreadable(member, "malformed pax records", e))?
    else {
        return Ok(());
    };
    for record in records {
        let record = record.map_err(|e| Error::unreadable(member, "malformed pax records", e))?;
        if record.key_bytes().starts_with(b"GNU.sparse.") {
            return Err(Error::rejected(
                member,
                "pax GNU.sparse records are not supported; use GNU sparse ('S') entries",
            ));
        }
    }
    Ok(())
}
