//! The library's one error type. Each variant names the path, digest or
//! archive member it is about and knows the process exit code it maps to
//! (DESIGN §7), so `main` never has to guess.

use std::path::PathBuf;

use crate::model::digest::Digest;
use crate::model::image::MetadataError;
use crate::model::manifest::ManifestError;

/// Exit codes of the `msb-registry` binary (DESIGN §7).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Unexpected error (I/O, database).
    pub const UNEXPECTED: i32 = 1;
    /// Bad usage: unknown flag, malformed argument, ambiguous reference.
    pub const USAGE: i32 = 2;
    /// The named snapshot, parent or file is not in the registry.
    pub const NOT_FOUND: i32 = 3;
    /// Already exists with other content, or still has children.
    pub const CONFLICT: i32 = 4;
    /// Integrity or verification failure.
    pub const INTEGRITY: i32 = 5;
    /// Archive refused: grammar, unsafe path, entry type, corrupt stream.
    pub const REJECTED: i32 = 6;
    /// The file system refused a write: no space left, quota exceeded, or
    /// read-only. Nothing was changed; free space (or remount) and retry.
    pub const STORAGE: i32 = 7;
    /// A remote registry could not be reached, dropped the connection, or
    /// answered with an error of its own.
    pub const REMOTE: i32 = 8;
    /// A remote registry refused our credentials (or asked for some we lack).
    pub const AUTH: i32 = 9;
    /// A signature refused, or a trust policy not met: a snapshot without a
    /// valid signature by an allowed principal. Nothing was installed.
    pub const SIGNATURE: i32 = 10;
}

/// Placeholder member of a refusal about the whole archive, replaced by its
/// path once the import knows it ([`Error::naming_archive`]).
const WHOLE_ARCHIVE: &str = "\0archive";

/// A signal's name for messages.
fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Everything that can go wrong in a registry operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line value that cannot be used as given.
    #[error("{0}")]
    Usage(String),

    /// A reference that names nothing in the registry.
    #[error("{what} not found: {reference}")]
    NotFound {
        /// What was looked for ("snapshot", "parent", "cache file").
        what: &'static str,
        /// The reference as the user or the archive gave it.
        reference: String,
    },

    /// A parent named by the chain is absent from the index.
    #[error(
        "parent {parent} of {child} is not in the registry; import or add it first, or export without --with-parents"
    )]
    MissingParent {
        /// The absent ancestor.
        parent: Digest,
        /// The snapshot that names it.
        child: Digest,
    },

    /// A digest prefix that matches more than one snapshot.
    #[error("reference {reference} is ambiguous; candidates: {}", candidates.join(", "))]
    Ambiguous {
        /// The prefix the user gave.
        reference: String,
        /// Every matching digest.
        candidates: Vec<String>,
    },

    /// Something already in the registry holds the name or path with other content.
    #[error("conflict: {subject}: {detail}")]
    Conflict {
        /// The snapshot name, digest or cache path in conflict.
        subject: String,
        /// What differs.
        detail: String,
    },

    /// `rm` of a snapshot that other snapshots name as parent.
    #[error(
        "snapshot {name} ({digest}) has {children} child snapshot(s): {}{}; remove them with it (rm {name} {}{}) or use --force to leave them shallow",
        named.join(", "),
        if (named.len() as u64) < *children { ", …" } else { "" },
        named.join(" "),
        if (named.len() as u64) < *children { " …" } else { "" }
    )]
    HasChildren {
        /// Name of the snapshot.
        name: String,
        /// Digest of the snapshot.
        digest: Digest,
        /// How many snapshots name it as parent.
        children: u64,
        /// The first few of them, by name.
        named: Vec<String>,
    },

    /// A manifest that breaks the schema of DESIGN §1.
    #[error("invalid manifest {path}")]
    Manifest {
        /// Where the manifest was read from (file or archive member).
        path: String,
        /// The rule it breaks.
        #[source]
        source: ManifestError,
    },

    /// Content that does not match what was recorded or declared.
    #[error("integrity failure: {subject}: {detail}")]
    Integrity {
        /// The file, member or digest concerned.
        subject: String,
        /// Expected and found.
        detail: String,
    },

    /// An upper whose recorded integrity cannot be checked (unknown
    /// algorithm, malformed digest).
    #[error("integrity failure: {subject}")]
    UncheckableIntegrity {
        /// The upper file or member.
        subject: String,
        /// What is wrong with the manifest's `upper.integrity`.
        #[source]
        source: ManifestError,
    },

    /// An image metadata document that is malformed or does not hash to
    /// the digests it records.
    #[error("integrity failure: {path}")]
    Metadata {
        /// The metadata file or member.
        path: String,
        /// What is wrong with it.
        #[source]
        source: MetadataError,
    },

    /// An archive refused before anything was installed.
    #[error("rejected archive: {member}: {reason}")]
    Rejected {
        /// The member path, or the archive's for problems of the whole stream.
        member: String,
        /// The rule it breaks.
        reason: String,
    },

    /// An archive refused because its stream or a member could not be read
    /// (corrupt or truncated compression, tar framing or pax records).
    #[error("rejected archive: {member}: {reason}")]
    Unreadable {
        /// The member path, or the archive's for problems of the whole stream.
        member: String,
        /// Where reading stopped.
        reason: String,
        /// What the decoder or tar reader reported.
        #[source]
        source: std::io::Error,
    },

    /// A file `add` or `reindex` cannot take: not a regular file, or a
    /// name that is not UTF-8 or not a plain file name. It exits like a
    /// rejected archive: the input, not the registry, is at fault.
    #[error("unsupported file: {path}: {reason}")]
    Unsupported {
        /// The file.
        path: String,
        /// Why it cannot be taken.
        reason: String,
    },

    /// A file-system operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done ("read", "create", "rename" …).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },

    /// The index database failed.
    #[error("registry database{}", corrupt_hint(.0))]
    Db(#[from] rusqlite::Error),

    /// No registry at the root a read command was given.
    #[error("no registry at {}", root.display())]
    NoRegistry {
        /// The root as given.
        root: PathBuf,
    },

    /// The index is missing or empty while artifacts are on disk: not an
    /// empty registry but a lost one.
    #[error(
        "the index {} is {state} but {artifacts} holds artifacts; run `msb-registry reindex` to rebuild it from them",
        db.display()
    )]
    IndexLost {
        /// `registry.db`.
        db: PathBuf,
        /// "missing" or "empty".
        state: &'static str,
        /// The directory found holding artifacts.
        artifacts: String,
    },

    /// The index's schema history is damaged: what `reindex` repairs.
    #[error(
        "the index {} is corrupt: {detail} (`msb-registry reindex` moves it aside and rebuilds the index from the files)",
        db.display()
    )]
    IndexHistory {
        /// `registry.db`.
        db: PathBuf,
        /// What is wrong with the history.
        detail: String,
    },

    /// `registry.db` is an SQLite database some other program wrote: it is
    /// neither read nor migrated.
    #[error(
        "{} is not an msb-registry index: {detail}; nothing was changed (move it away, or choose another --root)",
        db.display()
    )]
    ForeignIndex {
        /// `registry.db`.
        db: PathBuf,
        /// What it holds instead.
        detail: String,
    },

    /// `registry.db` exists but is not a regular file.
    #[error(
        "the index {} is {kind}, not a file; move it away, then `msb-registry reindex` rebuilds the index from the files",
        db.display()
    )]
    IndexNotFile {
        /// `registry.db`.
        db: PathBuf,
        /// "a directory", "a FIFO" …
        kind: &'static str,
    },

    /// The index was written by a newer msb-registry, with migrations this
    /// binary does not know: reads go on where the schema allows, writes are refused.
    #[error(
        "the index {} was written by a newer msb-registry{} (schema V{version}); this is msb-registry {}, which knows the schema up to V{known}: upgrade msb-registry to {what}",
        db.display(),
        writer.as_deref().map(|w| format!(" ({w})")).unwrap_or_default(),
        env!("CARGO_PKG_VERSION")
    )]
    IndexTooNew {
        /// `registry.db`.
        db: PathBuf,
        /// The highest schema version applied.
        version: i64,
        /// The highest version this binary embeds.
        known: i64,
        /// The version of msb-registry that last migrated it, when recorded.
        writer: Option<String>,
        /// What was refused ("write to it", "read it").
        what: &'static str,
    },

    /// The registry lock stayed held by another command past the timeout.
    #[error("{} is still held by another msb-registry command after {waited_secs} s; retry when it ends", path.display())]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long this command waited.
        waited_secs: u64,
    },

    /// Applying the embedded schema migrations failed.
    #[error("registry database migration")]
    Migration(#[from] refinery::Error),

    /// A read-only SQL query that tried to write.
    #[error("sql: the index is opened read-only; only queries that read are allowed: {0}")]
    ReadOnlySql(String),

    /// `verify` found problems (its report names each one).
    #[error("verification failed: {problems} problem(s) found")]
    VerifyFailed {
        /// How many.
        problems: usize,
    },

    /// A remote registry that cannot be reached or answered with an error.
    #[error("registry {registry}: {detail}")]
    Remote {
        /// `host[:port]`.
        registry: String,
        /// What went wrong, without credentials.
        detail: String,
    },

    /// A remote registry refused our credentials or asked for some.
    #[error("registry {registry}: authentication failed: {detail}")]
    RemoteAuth {
        /// `host[:port]`.
        registry: String,
        /// What it said.
        detail: String,
    },

    /// Something a remote registry served that is not a well-formed
    /// microsandbox artifact (refused like a bad archive).
    #[error("rejected from registry: {subject}: {reason}")]
    RemoteRejected {
        /// The manifest, chunk map or blob.
        subject: String,
        /// The rule it breaks.
        reason: String,
    },

    /// A signature that is malformed or does not verify, or a snapshot a
    /// trust policy requires signed that no allowed principal signed.
    #[error("signature refused: {subject}: {detail}")]
    Signature {
        /// The snapshot digest, signature member or file concerned.
        subject: String,
        /// What is missing or wrong.
        detail: String,
    },

    /// A failpoint fired (crash-injection testing only).
    #[error("failpoint {0} fired")]
    Failpoint(String),

    /// SIGINT or SIGTERM stopped an import or export (see `interrupt`).
    #[error("interrupted by {}{}", signal_name(*signal), if cleaned.is_empty() { String::new() } else { format!("; {cleaned}") })]
    Interrupted {
        /// The signal number.
        signal: i32,
        /// What was removed on the way out, for the message.
        cleaned: String,
    },
}

impl Error {
    /// The exit code the binary returns for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Ambiguous { .. } => exit::USAGE,
            Error::NotFound { .. } | Error::MissingParent { .. } => exit::NOT_FOUND,
            Error::Conflict { .. } | Error::HasChildren { .. } => exit::CONFLICT,
            Error::Manifest { .. }
            | Error::Integrity { .. }
            | Error::UncheckableIntegrity { .. }
            | Error::Metadata { .. }
            | Error::VerifyFailed { .. } => exit::INTEGRITY,
            Error::Rejected { .. }
            | Error::Unreadable { .. }
            | Error::Unsupported { .. }
            | Error::RemoteRejected { .. } => exit::REJECTED,
            Error::Remote { .. } => exit::REMOTE,
            Error::RemoteAuth { .. } => exit::AUTH,
            Error::Signature { .. } => exit::SIGNATURE,
            Error::ReadOnlySql(_) => exit::USAGE,
            Error::Interrupted { signal, .. } => 128 + signal,
            Error::NoRegistry { .. } => exit::NOT_FOUND,
            Error::IndexLost { .. }
            | Error::IndexHistory { .. }
            | Error::ForeignIndex { .. }
            | Error::IndexNotFile { .. } => exit::INTEGRITY,
            Error::IndexTooNew { .. } => exit::USAGE,
            Error::LockTimeout { .. } => exit::CONFLICT,
            Error::Db(e) if is_corrupt(e) || is_bad_value(e) => exit::INTEGRITY,
            Error::Db(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                exit::CONFLICT
            }
            _ if self.is_storage() => exit::STORAGE,
            Error::Io { .. } | Error::Db(_) | Error::Migration(_) | Error::Failpoint(_) => {
                exit::UNEXPECTED
            }
        }
    }

    /// Whether the index is corrupt or holds rows that cannot be decoded:
    /// what `reindex` repairs by rebuilding it.
    pub fn is_damaged_index(&self) -> bool {
        matches!(self, Error::Db(e) if is_corrupt(e) || is_bad_value(e))
            || matches!(self, Error::IndexHistory { .. })
    }

    /// Whether a file-system operation was refused for want of permission.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
    }

    /// Whether the file system refused a write for want of space or
    /// because it is read-only (for the files or for the index).
    pub fn is_storage(&self) -> bool {
        use std::io::ErrorKind::{QuotaExceeded, ReadOnlyFilesystem, StorageFull};
        match self {
            Error::Io { source, .. } => {
                matches!(
                    source.kind(),
                    StorageFull | QuotaExceeded | ReadOnlyFilesystem
                )
            }
            Error::Db(e) => is_storage_refusal(e),
            _ => false,
        }
    }

    /// The one line the binary prints after `error: `: the message and each
    /// cause, joined by `: `, with control characters escaped. Member names,
    /// manifest keys and tar reader messages come from archives, so a
    /// newline or terminal escape in them must not break the line or forge
    /// output.
    pub fn report_line(&self) -> String {
        escape_controls(&self.with_causes())
    }

    /// The message and each cause, joined by `: `, as recorded in the
    /// import journal and in `reindex` skip reasons.
    pub fn with_causes(&self) -> String {
        let mut line = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            line.push_str(": ");
            line.push_str(&cause.to_string());
            source = cause.source();
        }
        line
    }

    /// Shorthand for an [`Error::Io`] about `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for an [`Error::Rejected`] about `member`.
    pub fn rejected(member: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Rejected {
            member: member.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for an [`Error::Rejected`] about the archive as a whole
    /// (its stream, or what it lacks); [`Error::naming_archive`] later puts
    /// the archive's path in place of the placeholder.
    pub fn rejected_archive(reason: impl Into<String>) -> Self {
        Self::rejected(WHOLE_ARCHIVE, reason)
    }

    /// Shorthand for an [`Error::Unreadable`] about `member`.
    pub fn unreadable(
        member: impl Into<String>,
        reason: impl Into<String>,
        source: std::io::Error,
    ) -> Self {
        Error::Unreadable {
            member: member.into(),
            reason: reason.into(),
            source,
        }
    }

    /// Shorthand for an [`Error::Unreadable`] about the archive as a whole;
    /// see [`Error::rejected_archive`].
    pub fn unreadable_archive(reason: impl Into<String>, source: std::io::Error) -> Self {
        Self::unreadable(WHOLE_ARCHIVE, reason, source)
    }

    /// Shorthand for an [`Error::Unsupported`] about `path`.
    pub fn unsupported(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// This error with a whole-archive refusal naming `archive` (its path,
    /// or "stdin").
    pub fn naming_archive(self, archive: &str) -> Self {
        match self {
            Error::Rejected { member, reason } if member == WHOLE_ARCHIVE => Error::Rejected {
                member: archive.to_string(),
                reason,
            },
            Error::Unreadable {
                member,
                reason,
                source,
            } if member == WHOLE_ARCHIVE => Error::Unreadable {
                member: archive.to_string(),
                reason,
                source,
            },
            e => e,
        }
    }

    /// Shorthand for an [`Error::Integrity`] about `subject`.
    pub fn integrity(subject: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Integrity {
            subject: subject.into(),
            detail: detail.into(),
        }
    }

    /// Shorthand for an [`Error::Signature`] about `subject`.
    pub fn signature(subject: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Signature {
            subject: subject.into(),
            detail: detail.into(),
        }
    }

    /// Shorthand for an [`Error::Conflict`] about `subject`.
    pub fn conflict(subject: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Conflict {
            subject: subject.into(),
            detail: detail.into(),
        }
    }
}

/// Whether SQLite says the index file is damaged or not a database at all.
pub fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if matches!(
            f.code,
            rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
        )
    )
}

/// Whether a row holds a value the registry cannot have written (a
/// digest that does not parse, labels that are not JSON, a wrong type).
pub fn is_bad_value(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
    )
}

/// SQLite could not write for want of space or because the file system
/// (or the index) is read-only; growing the `-shm` fails only for space.
fn is_storage_refusal(e: &rusqlite::Error) -> bool {
    use rusqlite::ffi::{SQLITE_IOERR_SHMMAP, SQLITE_IOERR_SHMSIZE};
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::ReadOnly)
            || matches!(f.extended_code, SQLITE_IOERR_SHMMAP | SQLITE_IOERR_SHMSIZE))
}

fn corrupt_hint(e: &rusqlite::Error) -> &'static str {
    if is_corrupt(e) {
        " is corrupt (`msb-registry reindex` moves it aside and rebuilds the index from the files)"
    } else if matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy)
    {
        " stayed busy: another msb-registry command kept writing it; retry when it ends"
    } else if is_storage_refusal(e) {
        " could not be written: the file system is full or read-only; free space (or remount) and retry"
    } else if is_bad_value(e) {
        " holds a value the registry cannot have written (`msb-registry reindex` rebuilds the index from the files)"
    } else {
        ""
    }
}

fn escape_controls(text: &str) -> String {
    crate::model::text::escape(text).into_owned()
}

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach a path and an operation name to an `io::Result`.
pub trait IoContext<T> {
    /// Map the error into [`Error::Io`] naming `op` and `path`.
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::io(op, path, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_archive_keeps_its_cause_and_gets_its_name() {
        let cause = std::io::Error::other("invalid checksum");
        let e = Error::unreadable_archive("corrupt tar stream", cause).naming_archive("a.tar");
        assert_eq!(e.exit_code(), exit::REJECTED);
        assert_eq!(e.to_string(), "rejected archive: a.tar: corrupt tar stream");
        let source = std::error::Error::source(&e).expect("the cause is kept");
        assert_eq!(source.to_string(), "invalid checksum");
        assert_eq!(
            e.report_line(),
            "rejected archive: a.tar: corrupt tar stream: invalid checksum"
        );
    }

    #[test]
    fn full_or_read_only_storage_exits_7() {
        for errno in [28, 30, 122] {
            let e = Error::io("write", "/r/x", std::io::Error::from_raw_os_error(errno));
            assert_eq!(e.exit_code(), exit::STORAGE, "errno {errno}");
        }
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert_eq!(Error::Db(full).exit_code(), exit::STORAGE);
        let other = Error::io("read", "/r/x", std::io::Error::from_raw_os_error(5));
        assert_eq!(other.exit_code(), exit::UNEXPECTED);
    }

    #[test]
    fn report_line_escapes_control_characters_and_joins_causes() {
        let e = Error::rejected("\nsha256-0123456789abcdef/x\x1b[2J", "bad\r\nname\t");
        assert_eq!(
            e.report_line(),
            "rejected archive: \\nsha256-0123456789abcdef/x\\u{1b}[2J: bad\\r\\nname\\t"
        );
        let io = Error::io(
            "read",
            "a\nb",
            std::io::Error::other("cause\nwith a newline"),
        );
        let line = io.report_line();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.ends_with(": cause\\nwith a newline"), "{line}");
    }
}
