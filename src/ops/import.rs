//! `import`: an archive (file or stdin, zstd or plain tar) into the
//! registry, all or nothing. The flow of DESIGN §4 and §5: take a lease,
//! check every header against the grammar before its data is written,
//! stream each file into `staging/<id>/` while hashing it, record the staged
//! files in one transaction, verify the whole set ([`crate::archive::check`]), then
//! hand it to [`install`], which checks compatibility and promotes under the
//! journal.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::archive::check::{self, CheckedSet};
use crate::archive::entry::{
    DEFAULT_MAX_FILE_BYTES, MANIFEST_FILE, Member, MemberSet, carried_name, check_size, classify,
    manifest_first,
};
use crate::archive::hole_budget::{DEFAULT_FREE_HOLE_BYTES, HoleBudget};
use crate::archive::import_source::{self, OpenedSource, Pump, PumpError};
use crate::archive::names::{self, NameFallback, Named};
use crate::archive::streamed::{CarriedName, StagedMember, Streamed, StreamedSnapshot};
use crate::archive::tar_reader::{Chunk, ReadError, TarReader};
use crate::db;
use crate::db::staging::StagingIndex;
use crate::journal::Lease;
use crate::journal::lease::clear_dead_staging;
use crate::model::chunk::is_zero;
use crate::model::digest::Digest;
use crate::model::error::{Error, IoContext, Result};
use crate::model::image::CacheFile;
use crate::model::manifest::{Integrity, Manifest};
use crate::ops::install::install_checked;
use crate::ops::registry::Registry;
use crate::ops::sign::{Arriving, TrustOptions, admit};
use crate::process::failpoint;
use crate::process::progress::Progress;
use crate::store::files::{CHUNK, Piece};
use crate::store::layout::{Layout, SnapshotName};
use crate::store::pipeline;
use crate::store::stage::{
    PROGRESS_STEP, PendingIntegrity, StagedBytes, StagingFile, check_integrity,
};
use crate::trust::sshsig::Signature;

pub use crate::archive::import_source::ImportSource;

/// Options of `import`.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Name for the head snapshot, over the name the archive carries; the
    /// others take the names the archive carries when those are free, else
    /// their archive prefix. A head already present under another name is
    /// renamed to it.
    pub name: Option<String>,
    /// Largest logical size of one file; `None` means
    /// [`DEFAULT_MAX_FILE_BYTES`] (1 TiB).
    pub max_file_bytes: Option<u64>,
    /// The fixed part of the budget of hole bytes hashed for upper
    /// integrity ([`crate::archive::hole_budget`]); `None` means
    /// [`DEFAULT_FREE_HOLE_BYTES`] (64 GiB).
    pub max_hole_bytes: Option<u64>,
    /// Accept an archive whose first snapshot's parent is neither in the
    /// archive nor in the registry (the snapshots land shallow); refused
    /// otherwise, naming the missing base.
    pub allow_shallow: bool,
    /// Which signatures the snapshots must carry.
    pub trust: TrustOptions,
    /// Re-hash a snapshot already present before calling it intact, so a
    /// bit flip in it is repaired too (size and manifest are always checked).
    pub repair: bool,
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
    /// Names the archive carried that were not used (taken here, or not
    /// valid names): those snapshots landed under their archive prefix.
    pub name_fallbacks: Vec<NameFallback>,
    /// Damaged directories the import replaced, each moved to `quarantine/`.
    pub repaired: Vec<crate::ops::repair::Repaired>,
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
        let opened = import_source::open(source)?;
        self.import_from(source, opened, opts, progress)
    }

    /// Import from a source already opened, which `source` names (the
    /// journal's label, error messages). [`OpenedSource::from_reader`] makes
    /// one of any byte stream.
    pub fn import_from(
        &mut self,
        source: &ImportSource,
        opened: OpenedSource,
        opts: &ImportOptions,
        progress: &dyn Progress,
    ) -> Result<ImportReport> {
        let head_name = opts.name.as_deref().map(SnapshotName::chosen).transpose()?;
        let (layout, db) = self.parts();
        clear_dead_staging(layout, db)?;
        let lease = Lease::acquire(layout, db, &source.label())?;
        let cache = self.db().cache_size()?;
        let result = self
            .import_leased(&lease, source, opened, head_name, opts, progress)
            .map_err(|e| e.naming_archive(&source.display_name()));
        let restored = self.db().set_cache_size(cache);
        let report = self.end_lease(lease, "import", result)?;
        restored?;
        Ok(report)
    }

    fn import_leased(
        &mut self,
        lease: &Lease,
        source: &ImportSource,
        opened: OpenedSource,
        head_name: Option<SnapshotName>,
        opts: &ImportOptions,
        progress: &dyn Progress,
    ) -> Result<ImportReport> {
        let trusts = self.trust_policy(&opts.trust)?;
        let layout = self.layout().clone();
        let spill = Rc::new(open_spill(&layout, lease.id())?);
        let mut streamed = self.stream(lease, &spill, source, opened, opts, progress)?;
        failpoint::hit(failpoint::IMPORT_STREAMED)?;
        check::uppers_present(&streamed.snapshots)?;

        let head = check::head(&streamed.snapshots)?;
        if !opts.allow_shallow {
            check::base_present(self.db().conn(), &streamed.snapshots)?;
        }
        let conn = self.db().conn();
        let carried: Vec<_> = streamed
            .snapshots
            .iter()
            .map(|s| (s.digest, s.carried_name.as_deref()))
            .collect();
        let (names, mut name_fallbacks) =
            names::decide(conn, &carried, head, head_name.as_ref(), |d| {
                Ok(db::snapshots::snapshot_by_digest(conn, d)?.is_some())
            })?;
        if streamed.snapshots.len() <= LARGE_CACHE_UP_TO {
            self.db().set_cache_size(-LARGE_CACHE_KIB)?;
        }
        record(self, lease, &spill, &streamed, &names)?;
        failpoint::hit(failpoint::IMPORT_RECORDED)?;

        let head_digest = streamed.snapshots[head].digest;
        let head_fallback = names[head].name.to_string();
        // Without a trust policy only signed snapshots need looking at.
        let arrivals: Vec<_> = streamed
            .snapshots
            .iter_mut()
            .filter(|s| !trusts.is_empty() || !s.signatures.is_empty())
            .map(|s| (s.digest, s.parent, std::mem::take(&mut s.signatures)))
            .collect();
        let mut checked: CheckedSet = check::verify(&layout, streamed, names, spill)?;
        checked.set.signatures = {
            let arriving: Vec<Arriving> = arrivals
                .iter()
                .map(|(digest, parent, signatures)| Arriving {
                    digest: *digest,
                    parent: *parent,
                    signatures,
                })
                .collect();
            admit(self.db().conn(), &trusts, &arriving)?
        };
        drop(arrivals);
        failpoint::hit(failpoint::IMPORT_VERIFIED)?;
        crate::process::interrupt::check()?;

        let rename_to = self.head_rename(&head_digest, head_name)?;
        let outcome = install_checked(self, lease, &mut checked.set, opts.repair)?;
        name_fallbacks.extend(outcome.name_fallbacks);
        if let Some(wanted) = &rename_to {
            self.rename(&head_digest.to_string(), wanted.as_str())?;
        }
        let name = db::snapshots::snapshot_by_digest(self.db().conn(), &head_digest)?
            .map(|r| r.name)
            .unwrap_or(head_fallback);
        Ok(ImportReport {
            microsandbox_hint: if outcome.imported.is_empty() {
                None
            } else {
                crate::store::shared_home::reindex_hint(self.layout())
            },
            head: head_digest,
            name,
            imported: outcome.imported,
            skipped: outcome.skipped,
            cache_files_installed: outcome.cache_files_installed,
            cache_files_skipped: outcome.cache_files_skipped,
            name_fallbacks,
            repaired: outcome.repaired,
        })
    }
}

impl Registry {
    /// Read the whole archive into staging on a one-worker runtime, with
    /// progress in logical bytes: the compressed size a file source offers
    /// would give an ETA off by the archive's compression ratio and its holes.
    fn stream(
        &self,
        lease: &Lease,
        spill: &StagingIndex,
        source: &ImportSource,
        opened: OpenedSource,
        opts: &ImportOptions,
        progress: &dyn Progress,
    ) -> Result<Streamed> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .at("start runtime for", source.label())?;
        progress.start("import", None);
        let streamed = runtime.block_on(read_archive(
            self.layout(),
            self.db().conn(),
            lease.id(),
            spill,
            source,
            opened,
            Limits {
                max_file_bytes: opts.max_file_bytes.unwrap_or(DEFAULT_MAX_FILE_BYTES),
                free_hole_bytes: opts.max_hole_bytes.unwrap_or(DEFAULT_FREE_HOLE_BYTES),
            },
            progress,
        ));
        runtime.shutdown_background();
        progress.finish();
        streamed
    }

    /// The name `--name` asks for a head that is already present under
    /// another name (it is renamed after install), refused when taken.
    fn head_rename(
        &self,
        head: &Digest,
        head_name: Option<SnapshotName>,
    ) -> Result<Option<SnapshotName>> {
        let conn = self.db().conn();
        let present = db::snapshots::snapshot_by_digest(conn, head)?;
        let Some(wanted) = head_name.filter(|n| present.is_some_and(|r| r.name != n.as_str()))
        else {
            return Ok(None);
        };
        if let Some(other) = db::snapshots::snapshot_by_name(conn, wanted.as_str())? {
            return Err(Error::Conflict {
                subject: wanted.to_string(),
                detail: format!(
                    "the head {head} is already here under another name, and the name is taken by snapshot {}",
                    other.digest
                ),
            });
        }
        if self.layout().snapshot(&wanted).symlink_metadata().is_ok() {
            return Err(Error::Conflict {
                subject: wanted.to_string(),
                detail: crate::ops::gc::in_the_way(&self.layout().snapshot(&wanted)),
            });
        }
        Ok(Some(wanted))
    }
}

/// Record every staged file in one transaction: the import's lease on them.
/// Row by row, so the rows are never all in memory at once.
fn record(
    registry: &mut Registry,
    lease: &Lease,
    spill: &StagingIndex,
    streamed: &Streamed,
    names: &[Named],
) -> Result<()> {
    let layout = registry.layout().clone();
    let rel = |p: &Path| -> String {
        p.strip_prefix(layout.root())
            .expect("staging is under the root")
            .to_string_lossy()
            .into_owned()
    };
    let tx = registry.db_mut().write()?;
    let insert = |row: db::ImportFileRow| {
        db::imports::insert_import_files(&tx, lease.id(), std::slice::from_ref(&row))
    };
    spill.each_file(|f| {
        let (s, name) = (
            &streamed.snapshots[f.snapshot as usize],
            &names[f.snapshot as usize].name,
        );
        let file = &f.row.path;
        insert(db::ImportFileRow {
            member: s.member(file),
            staged_path: rel(&s.dir(&streamed.staged).join(file)),
            final_path: rel(&layout.snapshot_file(name, file)),
            kind: "snapshot".into(),
            size: f.row.size,
            digest: f.row.digest,
            promote: true,
        })
    })?;
    for (file, m) in &streamed.cache {
        insert(db::ImportFileRow {
            member: m.member.clone(),
            staged_path: rel(&m.path),
            final_path: rel(&layout.cache_file(file)),
            kind: file.kind.as_str().into(),
            size: m.bytes.size,
            digest: m.bytes.digest,
            promote: true,
        })?;
    }
    tx.commit()?;
    Ok(())
}

/// Read the whole archive into staging; the decompressing worker's failure
/// takes precedence over the tar reader's, since it is the cause.
#[expect(
    clippy::too_many_arguments,
    reason = "the stores it writes to, the source and its bounds, each its own"
)]
async fn read_archive(
    layout: &Layout,
    conn: &rusqlite::Connection,
    id: &str,
    spill: &StagingIndex,
    source: &ImportSource,
    opened: OpenedSource,
    limits: Limits,
    progress: &dyn Progress,
) -> Result<Streamed> {
    let (opened, source_bytes) = opened.counted();
    let (tar, pump) = Pump::start(opened);
    let tar = tokio::io::BufReader::with_capacity(READ_AHEAD_BYTES, tar);
    let mut reader = TarReader::new(tar, &layout.import_staging(id));
    let mut stager = Stager {
        layout,
        conn,
        id,
        max_file_bytes: limits.max_file_bytes,
        holes: HoleBudget::new(limits.free_hole_bytes),
        source_bytes,
        pinned: HashSet::new(),
        images: HashMap::new(),
        spill,
        members: MemberSet::new(spill),
        streamed: Streamed {
            staged: layout.staged_snapshots(id),
            ..Streamed::default()
        },
        by_prefix: HashMap::new(),
        progress,
        buf: vec![0u8; CHUNK],
        last: None,
        hashing: std::collections::VecDeque::new(),
    };
    let outcome = tokio::select! {
        r = stager.run(&mut reader) => r,
        e = crate::process::interrupt::wait() => Err(e),
    };
    if let Err(e @ Error::Interrupted { .. }) = outcome {
        // The source may block for ever (a silent pipe): do not wait for it.
        pump.abort();
        return Err(e);
    }
    let trailing = match &outcome {
        Ok(()) => reader.finish().await,
        Err(_) => Ok(()),
    };
    drop(reader);
    match pump.finish().await {
        Err(PumpError::Zstd(e)) => Err(zstd_error(e)),
        Err(PumpError::Read(e)) => Err(Error::io("read", source.label(), e)),
        Err(PumpError::NotAnArchive(what)) => Err(Error::rejected_archive(format!(
            "{}; import takes a tar archive, zstd-compressed (as export writes it) or plain{}",
            match what {
                "empty" => "it is empty".to_string(),
                _ => format!("it is {what}, not a tar archive"),
            },
            match what {
                "a gzip-compressed file" =>
                    " (for a .tar.gz: gzip -dc FILE | msb-registry import -)",
                "an xz-compressed file" => " (for a .tar.xz: xz -dc FILE | msb-registry import -)",
                "a bzip2-compressed file" =>
                    " (for a .tar.bz2: bzip2 -dc FILE | msb-registry import -)",
                _ => "",
            }
        ))),
        Ok(_) => {
            outcome?;
            trailing.map_err(|e| tar_error(&None, e))?;
            stager.settle(0)?;
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

/// Map a tar reader failure to a refusal of the archive, naming the last
/// member read before the stream broke.
fn tar_error(after: &Option<String>, e: ReadError) -> Error {
    let whence = match after {
        Some(m) => format!(" after member {m}"),
        None => String::new(),
    };
    Error::rejected_archive(format!("{e}{whence}"))
}

type Reader = TarReader<tokio::io::BufReader<tokio::io::DuplexStream>>;

/// How much of the decompressed archive the reader takes from the pipe at
/// once. Every read that frees room in the pipe wakes the decompressing
/// worker: reading a small member's header and data straight from it woke
/// the worker, and switched threads, about twice per member (10,000 times
/// for a 5,000-snapshot chain, over half the import's wall time).
const READ_AHEAD_BYTES: usize = 256 * 1024;

/// The import's spill database, in its staging directory.
fn open_spill(layout: &Layout, id: &str) -> Result<StagingIndex> {
    let dir = layout.import_staging(id);
    std::fs::create_dir_all(&dir).at("create directory", &dir)?;
    StagingIndex::create(&layout.import_spill(id))
}

/// An archive prefix (`sha256-<16 hex>`, checked by the grammar) as a
/// number: the same bits in 8 bytes instead of a 16-byte string.
fn prefix_key(prefix: &str) -> u64 {
    let hex = prefix.strip_prefix("sha256-").unwrap_or(prefix);
    u64::from_str_radix(hex, 16).expect("the grammar checked 16 hex digits")
}

/// The index's page cache, in KiB, while an import records and installs
/// its rows: their few long transactions touch pages of a dozen tables and
/// indexes keyed by random digests, which the default 2 MiB cache spills
/// into the WAL and reads back (a 5,000-snapshot chain: 45,000 WAL writes
/// and 59,000 reads with it, 22,000 and 4,300 with 8 MiB).
const LARGE_CACHE_KIB: i64 = 8 * 1024;

/// The most snapshots an import enlarges the cache for: beyond them its own
/// memory per snapshot (names, moves, the staged set) nears the 64 MiB bound
/// (`bench/bounds.sh`: 60 MiB for 100,000 with the default cache, 67 MiB
/// with 8 MiB), so the default is kept.
const LARGE_CACHE_UP_TO: usize = 50_000;

/// How long [`Stager::settle`] waits on the oldest hash before it looks
/// whether another has ended.
const SETTLE_NAP: std::time::Duration = std::time::Duration::from_millis(50);

/// The import's bounds on what one archive may cost.
struct Limits {
    max_file_bytes: u64,
    free_hole_bytes: u64,
}

struct Stager<'a> {
    layout: &'a Layout,
    /// For recording, as each manifest arrives, the image it pins.
    conn: &'a rusqlite::Connection,
    id: &'a str,
    max_file_bytes: u64,
    /// Hole bytes hashed for upper integrity, against their budget.
    holes: HoleBudget,
    /// Bytes read from the source so far, which the budget grows with.
    source_bytes: Arc<AtomicU64>,
    /// Images already recorded in `import_pins`.
    pinned: HashSet<Digest>,
    /// Each image's position in `streamed.images`.
    images: HashMap<(CacheFile, Digest), u32>,
    /// Member paths and staged files, spilled as they arrive.
    spill: &'a StagingIndex,
    members: MemberSet<'a>,
    streamed: Streamed,
    /// Each snapshot's index by its archive prefix's 16 hex digits.
    by_prefix: HashMap<u64, usize>,
    /// Advanced by the logical bytes staged (holes included): what the
    /// time is proportional to, since the integrity digests hash every byte.
    progress: &'a dyn Progress,
    buf: Vec<u8>,
    last: Option<String>,
    /// Uppers whose integrity hash still runs beside the reader, oldest
    /// first: (snapshot index, the hash).
    hashing: std::collections::VecDeque<(usize, PendingIntegrity)>,
}

impl Stager<'_> {
    /// Read members until the end-of-archive marker; every header is checked
    /// against the grammar ([`crate::archive::entry`]) before its data is read.
    async fn run(&mut self, reader: &mut Reader) -> Result<()> {
        loop {
            let Some(header) = reader.next().await.map_err(|e| tar_error(&self.last, e))? else {
                return Ok(());
            };
            let member = classify(header.typeflag, Some(&header.link), &header.path)?;
            let member_path = member.path();
            self.members.insert(&member)?;
            self.last = Some(member_path.clone());
            let size = header.size;
            check_size(&member, size, self.max_file_bytes).map_err(|r| r.of(&member_path))?;
            let is_file = matches!(member, Member::SnapshotFile { .. } | Member::CacheFile(_));
            match member {
                Member::Root
                | Member::SnapshotDir { .. }
                | Member::CacheDir
                | Member::CacheKindDir(_)
                | Member::SignaturesDir { .. } => {}
                Member::Signature { prefix, .. } => {
                    self.signature(reader, member_path, prefix, size).await?;
                }
                Member::SnapshotFile { prefix, file } if file == MANIFEST_FILE => {
                    let carried = header.comment.as_deref().and_then(carried_name);
                    let carried = carried.map(names::judge);
                    self.manifest(reader, member_path, prefix, size, carried)
                        .await?;
                }
                Member::SnapshotFile { prefix, file } => {
                    let holes = size.saturating_sub(header.stored);
                    self.snapshot_file(reader, member_path, prefix, file, (size, holes))
                        .await?;
                }
                Member::CacheFile(file) => {
                    self.cache_file(reader, member_path, file, size).await?;
                }
            }
            if is_file {
                failpoint::hit(failpoint::IMPORT_MEMBER_STAGED)?;
            }
        }
    }

    async fn manifest(
        &mut self,
        reader: &mut Reader,
        member: String,
        prefix: String,
        size: u64,
        carried_name: Option<CarriedName>,
    ) -> Result<()> {
        let mut bytes = vec![0u8; size as usize];
        let mut filled = 0;
        while let Some(chunk) = reader
            .read_data(&mut bytes[filled..])
            .await
            .map_err(|e| Error::rejected(&member, e.to_string()))?
        {
            match chunk {
                Chunk::Data(n) => filled += n,
                Chunk::Zeros(n) => filled += n as usize,
            }
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
        // Stored as its canonical bytes, so the file hashes to the snapshot digest.
        let canonical = parsed.manifest.canonical_bytes();
        let mut out = StagingFile::create(&path, canonical.len() as u64, None)?.chunked();
        out.piece(Piece::Data(&canonical))?;
        let staged = out.finish()?;
        self.by_prefix
            .insert(prefix_key(&prefix), self.streamed.snapshots.len());
        let index = self.streamed.snapshots.len();
        self.spill_file(index, MANIFEST_FILE, &staged)?;
        let image = (
            CacheFile::metadata_for_ref(&parsed.manifest.image.reference),
            image,
        );
        let image = *self.images.entry(image).or_insert_with(|| {
            self.streamed.images.push(image);
            (self.streamed.images.len() - 1) as u32
        });
        self.streamed
            .snapshots
            .push(StreamedSnapshot::new(&parsed, image, carried_name));
        Ok(())
    }

    /// Read a signature member (at most 8 KiB, checked at the header) into
    /// memory; it must follow its snapshot's manifest and be the only one
    /// of its key for that snapshot.
    async fn signature(
        &mut self,
        reader: &mut Reader,
        member: String,
        prefix: String,
        size: u64,
    ) -> Result<()> {
        let index = self.by_prefix.get(&prefix_key(&prefix)).copied();
        manifest_first(&prefix, index.is_some()).map_err(|r| r.of(&member))?;
        let index = index.expect("checked by manifest_first");
        let bytes = self.small(reader, &member, size).await?;
        let parsed = Signature::parse(&bytes).map_err(|why| Error::signature(&member, why))?;
        let snapshot = &mut self.streamed.snapshots[index];
        if let Some((first, _)) = snapshot
            .signatures
            .iter()
            .find(|(_, s)| s.fingerprint == parsed.fingerprint)
        {
            return Err(Error::signature(
                &member,
                format!(
                    "a second signature by key {} of {} (the first is {first})",
                    parsed.fingerprint, snapshot.digest
                ),
            ));
        }
        snapshot.signatures.push((member, parsed));
        Ok(())
    }

    /// The whole data of a member whose size the grammar bounded.
    async fn small(&mut self, reader: &mut Reader, member: &str, size: u64) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; size as usize];
        let mut filled = 0;
        while let Some(chunk) = reader
            .read_data(&mut bytes[filled..])
            .await
            .map_err(|e| Error::rejected(member, e.to_string()))?
        {
            match chunk {
                Chunk::Data(n) => filled += n,
                Chunk::Zeros(n) => filled += n as usize,
            }
        }
        Ok(bytes)
    }

    async fn snapshot_file(
        &mut self,
        reader: &mut Reader,
        member: String,
        prefix: String,
        file: String,
        (size, holes): (u64, u64),
    ) -> Result<()> {
        let index = self.by_prefix.get(&prefix_key(&prefix)).copied();
        manifest_first(&prefix, index.is_some()).map_err(|r| r.of(&member))?;
        let index = index.expect("checked by manifest_first");
        let snapshot = &self.streamed.snapshots[index];
        let upper = &snapshot.upper;
        let integrity = if *file == *upper.file {
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
        let path = snapshot.dir(&self.streamed.staged).join(&file);
        if integrity.is_some() {
            let read = self.source_bytes.load(Ordering::Relaxed);
            self.holes.charge(&member, holes, read)?;
            // Uppers hash beside each other, taking turns on the hash
            // slots: start this one once fewer than the large files
            // allowed in flight are still hashing.
            self.settle(pipeline::large_files_at_once() - 1)?;
        }
        let (bytes, hashing) = self
            .stage(reader, &member, &path, size, integrity.as_deref(), true)
            .await?;
        if *file == *self.streamed.snapshots[index].upper.file {
            self.streamed.snapshots[index].upper_staged = true;
        }
        if let Some(hash) = hashing {
            self.hashing.push_back((index, hash));
        }
        self.spill_file(index, &file, &bytes)
    }

    /// Record a staged snapshot file in the spill database.
    fn spill_file(&self, index: usize, file: &str, bytes: &StagedBytes) -> Result<()> {
        let index = u32::try_from(index).expect("MAX_MEMBERS bounds the snapshots");
        let row = db::SnapshotFileRow {
            path: file.to_string(),
            size: bytes.size,
            digest: bytes.digest,
        };
        self.spill.insert_file(index, &row, bytes.chunks.as_ref())?;
        Ok(())
    }

    /// Wait for upper integrity hashes until at most `running` remain,
    /// checking each against its manifest's record as soon as it ends,
    /// whichever ends first: a bad upper is refused while the hashes of
    /// uppers before it still run.
    fn settle(&mut self, running: usize) -> Result<()> {
        loop {
            if let Some(k) = self.hashing.iter().position(|(_, h)| h.is_done()) {
                let (snapshot, hash) = self.hashing.remove(k).expect("found");
                self.check_upper(snapshot, hash)?;
                continue;
            }
            if self.hashing.len() <= running {
                return Ok(());
            }
            self.hashing[0].1.wait_a_while(SETTLE_NAP);
        }
    }

    /// Check one upper's finished integrity hash against its manifest.
    fn check_upper(&self, snapshot: usize, hash: PendingIntegrity) -> Result<()> {
        let digest = hash.wait()?.finish();
        let s = &self.streamed.snapshots[snapshot];
        let integrity = s
            .upper
            .integrity
            .as_ref()
            .expect("hashed for its integrity");
        check_integrity(
            &format!("{}/{}", s.prefix(), s.upper.file),
            integrity,
            Some(digest),
        )
    }

    async fn cache_file(
        &mut self,
        reader: &mut Reader,
        member: String,
        file: CacheFile,
        size: u64,
    ) -> Result<()> {
        let path = self.layout.staged_cache_file(self.id, &file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).at("create directory", parent)?;
        }
        let (bytes, _) = self
            .stage(reader, &member, &path, size, None, false)
            .await?;
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

    /// Stream one member's data into `path`, hashing it (and with `chunked`
    /// cutting it into chunks) on the way; runs of zeros become holes. The
    /// integrity hash may still be running when this returns.
    async fn stage(
        &mut self,
        reader: &mut Reader,
        member: &str,
        path: &Path,
        size: u64,
        integrity: Option<&Integrity>,
        chunked: bool,
    ) -> Result<(StagedBytes, Option<PendingIntegrity>)> {
        let mut out = StagingFile::create(path, size, integrity)?;
        if chunked {
            out = out.chunked();
        }
        while let Some(chunk) = reader
            .read_data(&mut self.buf)
            .await
            .map_err(|e| Error::rejected(member, e.to_string()))?
        {
            match chunk {
                // A hole is hashed too: fed in steps, so the bar moves through it.
                Chunk::Zeros(mut n) => {
                    while n > 0 {
                        let step = n.min(PROGRESS_STEP);
                        out.piece(Piece::Zeros(step))?;
                        self.progress.advance(step);
                        n -= step;
                    }
                }
                Chunk::Data(n) => {
                    let data = &self.buf[..n];
                    out.piece(if is_zero(data) {
                        Piece::Zeros(n as u64)
                    } else {
                        Piece::Data(data)
                    })?;
                    self.progress.advance(n as u64);
                }
            }
        }
        out.finish_deferred()
    }
}
