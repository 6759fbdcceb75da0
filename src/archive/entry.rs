//! The closed member grammar of an archive (DESIGN §2), in one place. Every
//! header is classified here before a byte of its data is written: which
//! entry types and paths may appear, and what each may claim about its size.
//! Each rule is a small named function; each refusal is a [`Refusal`],
//! turned into an [`Error::Rejected`] naming the member.

use crate::db::staging::StagingIndex;
use crate::model::digest::is_lower_hex;
use crate::model::error::{Error, Result};
use crate::model::image::{CacheFile, CacheKind, MAX_METADATA_BYTES};
use crate::model::manifest::{MAX_MANIFEST_BYTES, is_normal_file_name};
use crate::model::text::shown_name;
use crate::trust::sshsig::{MAX_SIGNATURE_BYTES, MAX_SIGNATURES};

/// The directory of cache members.
pub const CACHE_DIR: &str = "cache";

/// The directory of signature members: `signatures/<prefix>/<n>.sshsig`,
/// after every snapshot and cache member (README "Signing and trust").
pub const SIGNATURES_DIR: &str = "signatures";

/// The extension of a signature member.
pub const SIGNATURE_EXT: &str = ".sshsig";

/// The member path of signature `index` of the snapshot whose archive
/// directory is `prefix`.
pub fn signature_member(prefix: &str, index: usize) -> String {
    format!("{SIGNATURES_DIR}/{prefix}/{index}{SIGNATURE_EXT}")
}

/// The name of a snapshot's manifest inside its directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The value prefix of the pax `comment` record that carries a snapshot's
/// name on its manifest member: `comment=msb-registry.name=<name>`.
/// `comment` is the POSIX keyword every reader ignores (GNU tar without a
/// word), so the name travels in archives other tools read unchanged.
pub const NAME_COMMENT: &str = "msb-registry.name=";

/// The name a pax `comment` record carries, if it is one of ours. The name
/// is not validated here: import treats it like a name a person chose.
pub fn carried_name(comment: &[u8]) -> Option<&[u8]> {
    comment.strip_prefix(NAME_COMMENT.as_bytes())
}

/// The longest path component accepted (the usual file-system limit).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// The most members an archive may hold (export refuses to write more):
/// 204,800, room for a 100,000-snapshot chain of two files each and its
/// image. Import keeps about 400 bytes per snapshot until install (the
/// rest is spilled to its staging database), so this is what holds its
/// peak memory under 64 MiB (docs/input.md).
pub const MAX_MEMBERS: usize = 204_800;

/// The largest logical size of one file an import accepts unless told
/// otherwise (`import --max-file-size`): 1 TiB. A sparse member's real size
/// costs no archive bytes, so without a limit a header could claim a hole
/// that takes years to hash.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 40;

/// Why a member is refused: the grammar's rules, one variant each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Type `2`.
    #[error("symbolic links are not allowed")]
    Symlink,
    /// Type `1`.
    #[error("hard links are not allowed")]
    HardLink,
    /// Type `3`.
    #[error("character devices are not allowed")]
    CharDevice,
    /// Type `4`.
    #[error("block devices are not allowed")]
    BlockDevice,
    /// Type `6`.
    #[error("FIFOs are not allowed")]
    Fifo,
    /// Type `g`.
    #[error("pax global headers are not allowed")]
    GlobalPax,
    /// Any other type.
    #[error(
        "entry type {0:?} is not allowed; only regular files, directories and GNU sparse files are"
    )]
    EntryType(char),
    /// A link name on an entry that is not a link.
    #[error("a link target on a non-link entry is not allowed")]
    LinkTarget,
    /// Raw path bytes that are not UTF-8.
    #[error("path is not UTF-8")]
    NotUtf8,
    /// A leading `/`.
    #[error("absolute paths are not allowed")]
    Absolute,
    /// A `..` component.
    #[error("'..' components are not allowed")]
    DotDot,
    /// A `.` component (other than one leading `./`).
    #[error("'.' components are not allowed")]
    Dot,
    /// `a//b`.
    #[error("empty path components are not allowed")]
    EmptyComponent,
    /// A component with bytes a file name may not hold.
    #[error("path component \"{0}\" is not a normal file name")]
    NotNormal(String),
    /// A component over [`MAX_COMPONENT_BYTES`].
    #[error("a path component of {0} bytes is longer than {MAX_COMPONENT_BYTES}")]
    ComponentTooLong(usize),
    /// A file path ending in `/`.
    #[error("a file path may not end in '/'")]
    FileEndsInSlash,
    /// A top-level directory other than a snapshot's or `cache`.
    #[error("top-level directories are sha256-<16 hex digits>/ or cache/")]
    TopLevelDirectory,
    /// A directory deeper than the grammar allows.
    #[error("directories are allowed only at depth 1 and as cache/<kind>/")]
    DeepDirectory,
    /// A file at the top level.
    #[error("files at the top level are not allowed")]
    TopLevelFile,
    /// `sha256-…/a/b`.
    #[error("snapshot members are sha256-<16 hex digits>/<file>; nesting is not allowed")]
    NestedSnapshotFile,
    /// `cache/x` or `cache/k/a/b`.
    #[error("cache members are cache/<kind>/<file>")]
    CacheShape,
    /// Anything outside `sha256-…/` and `cache/`.
    #[error("members live under sha256-<16 hex digits>/ or cache/")]
    Outside,
    /// `cache/<unknown>/`.
    #[error("unknown cache kind \"{0}\"; expected manifests, layers, fsmeta or vmdk")]
    UnknownCacheKind(String),
    /// A cache file name not valid for its kind.
    #[error("file name \"{name}\" is not valid in cache/{kind}/; expected {expected}")]
    CacheFileName {
        /// The name.
        name: String,
        /// Its kind directory.
        kind: CacheKind,
        /// The shape expected there.
        expected: &'static str,
    },
    /// The second member of one path.
    #[error("duplicate member")]
    Duplicate,
    /// One member over the cap ([`MAX_MEMBERS`]).
    #[error("the archive holds more than {0} members")]
    TooManyMembers(usize),
    /// A directory entry with a size.
    #[error("a directory entry may not carry data")]
    DirectoryWithData,
    /// A snapshot file before its directory's manifest.
    #[error(
        "comes before {prefix}/{MANIFEST_FILE}; the manifest must be the first member of its snapshot directory"
    )]
    BeforeManifest {
        /// The snapshot directory.
        prefix: String,
    },
    /// A manifest over [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {0} bytes; the limit is 1 MiB")]
    ManifestTooLarge(u64),
    /// Image metadata over [`MAX_METADATA_BYTES`].
    #[error("image metadata is {0} bytes; the limit is 16 MiB")]
    MetadataTooLarge(u64),
    /// A file under `signatures/` that is not `<prefix>/<n>.sshsig`.
    #[error(
        "signature members are signatures/sha256-<16 hex digits>/<n>.sshsig with n from 0 to {}",
        MAX_SIGNATURES - 1
    )]
    SignatureName,
    /// A signature over [`MAX_SIGNATURE_BYTES`].
    #[error("signature is {0} bytes; the limit is {MAX_SIGNATURE_BYTES}")]
    SignatureTooLarge(u64),
    /// A file whose logical size is over the import's limit.
    #[error(
        "logical size of {size} bytes is over the limit of {limit} bytes per file (raise it with --max-file-size)"
    )]
    FileTooLarge {
        /// The size the header claims.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

impl Refusal {
    /// The error refusing `member` for this reason.
    pub fn of(self, member: impl Into<String>) -> Error {
        Error::rejected(member, self.to_string())
    }
}

/// The two shapes of entry the grammar allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file, dense or GNU sparse.
    File,
    /// A directory.
    Directory,
}

/// A member that passed the grammar.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Member {
    /// The archive root itself (`./`), which some tar writers emit first.
    Root,
    /// `sha256-<16 hex>/`.
    SnapshotDir {
        /// `sha256-<16 hex>`.
        prefix: String,
    },
    /// `sha256-<16 hex>/<file>`.
    SnapshotFile {
        /// `sha256-<16 hex>`.
        prefix: String,
        /// A normal file name.
        file: String,
    },
    /// `cache/`.
    CacheDir,
    /// `cache/<kind>/`.
    CacheKindDir(CacheKind),
    /// `cache/<kind>/<file>`.
    CacheFile(CacheFile),
    /// `signatures/` or `signatures/<prefix>/`.
    SignaturesDir {
        /// The snapshot's archive directory, for `signatures/<prefix>/`.
        prefix: Option<String>,
    },
    /// `signatures/<prefix>/<index>.sshsig`: an armored SSHSIG of the
    /// snapshot whose archive directory is `prefix`.
    Signature {
        /// `sha256-<16 hex>`.
        prefix: String,
        /// Below [`MAX_SIGNATURES`].
        index: usize,
    },
}

impl Member {
    /// The member's canonical path (no `./`, directories end in `/`).
    pub fn path(&self) -> String {
        match self {
            Member::Root => "./".into(),
            Member::SnapshotDir { prefix } => format!("{prefix}/"),
            Member::SnapshotFile { prefix, file } => format!("{prefix}/{file}"),
            Member::CacheDir => format!("{CACHE_DIR}/"),
            Member::CacheKindDir(kind) => format!("{CACHE_DIR}/{kind}/"),
            Member::CacheFile(f) => format!("{CACHE_DIR}/{}", f.rel_path()),
            Member::SignaturesDir { prefix: None } => format!("{SIGNATURES_DIR}/"),
            Member::SignaturesDir { prefix: Some(p) } => format!("{SIGNATURES_DIR}/{p}/"),
            Member::Signature { prefix, index } => signature_member(prefix, *index),
        }
    }
}

/// Check one header: its entry type (the tar type flag byte), link name and
/// path. Returns the member it names.
pub fn classify(typeflag: u8, link_name: Option<&[u8]>, path: &[u8]) -> Result<Member> {
    let shown = shown_name(path);
    let reject = |reason: Refusal| reason.of(shown.clone());
    let kind = entry_kind(typeflag).map_err(reject)?;
    no_link_name(link_name).map_err(reject)?;
    let text = utf8_path(path).map_err(reject)?;
    not_absolute(text).map_err(reject)?;
    let rel = strip_current_dir(text);
    let parts = components(rel, kind).map_err(reject)?;
    match kind {
        EntryKind::Directory => directory_member(&parts),
        EntryKind::File => file_member(&parts),
    }
    .map_err(reject)
}

/// Entry types: regular files (`0`, or NUL as old tars wrote it),
/// directories and GNU sparse files only.
pub fn entry_kind(typeflag: u8) -> Result<EntryKind, Refusal> {
    match typeflag {
        b'0' | 0 | b'S' => Ok(EntryKind::File),
        b'5' => Ok(EntryKind::Directory),
        b'2' => Err(Refusal::Symlink),
        b'1' => Err(Refusal::HardLink),
        b'3' => Err(Refusal::CharDevice),
        b'4' => Err(Refusal::BlockDevice),
        b'6' => Err(Refusal::Fifo),
        b'g' => Err(Refusal::GlobalPax),
        other => Err(Refusal::EntryType(other as char)),
    }
}

/// No entry the grammar allows carries a link target.
pub fn no_link_name(link_name: Option<&[u8]>) -> Result<(), Refusal> {
    match link_name {
        Some(l) if !l.is_empty() => Err(Refusal::LinkTarget),
        _ => Ok(()),
    }
}

/// Paths are UTF-8, checked on the raw bytes.
pub fn utf8_path(path: &[u8]) -> Result<&str, Refusal> {
    std::str::from_utf8(path).map_err(|_| Refusal::NotUtf8)
}

/// No absolute paths.
pub fn not_absolute(path: &str) -> Result<(), Refusal> {
    if path.starts_with('/') {
        Err(Refusal::Absolute)
    } else {
        Ok(())
    }
}

/// One optional leading `./` is accepted and dropped.
pub fn strip_current_dir(path: &str) -> &str {
    path.strip_prefix("./").unwrap_or(path)
}

/// Split into components: none empty, none `.` or `..`, no NUL or
/// backslash; only a directory may end in `/`.
pub fn components(path: &str, kind: EntryKind) -> Result<Vec<&str>, Refusal> {
    let trimmed = match (kind, path.strip_suffix('/')) {
        (EntryKind::Directory, Some(t)) => t,
        (EntryKind::File, Some(_)) => return Err(Refusal::FileEndsInSlash),
        (_, None) => path,
    };
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = trimmed.split('/').collect();
    for part in &parts {
        match *part {
            ".." => return Err(Refusal::DotDot),
            "." => return Err(Refusal::Dot),
            "" => return Err(Refusal::EmptyComponent),
            p if !is_normal_file_name(p) => {
                return Err(Refusal::NotNormal(shown_name(p.as_bytes())));
            }
            p if p.len() > MAX_COMPONENT_BYTES => return Err(Refusal::ComponentTooLong(p.len())),
            _ => {}
        }
    }
    Ok(parts)
}

/// `sha256-` followed by 16 lowercase hex digits.
pub fn is_snapshot_prefix(name: &str) -> bool {
    name.strip_prefix("sha256-")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(is_lower_hex))
}

/// Directory entries: the root, `sha256-…/`, `cache/` and `cache/<kind>/`.
pub fn directory_member(parts: &[&str]) -> Result<Member, Refusal> {
    match parts {
        [] => Ok(Member::Root),
        [prefix] if is_snapshot_prefix(prefix) => Ok(Member::SnapshotDir {
            prefix: prefix.to_string(),
        }),
        [CACHE_DIR] => Ok(Member::CacheDir),
        [CACHE_DIR, kind] => cache_kind(kind).map(Member::CacheKindDir),
        [SIGNATURES_DIR] => Ok(Member::SignaturesDir { prefix: None }),
        [SIGNATURES_DIR, prefix] if is_snapshot_prefix(prefix) => Ok(Member::SignaturesDir {
            prefix: Some(prefix.to_string()),
        }),
        [_] => Err(Refusal::TopLevelDirectory),
        _ => Err(Refusal::DeepDirectory),
    }
}

/// File entries: `sha256-…/<file>` and `cache/<kind>/<file>`.
pub fn file_member(parts: &[&str]) -> Result<Member, Refusal> {
    match parts {
        [prefix, file] if is_snapshot_prefix(prefix) => Ok(Member::SnapshotFile {
            prefix: prefix.to_string(),
            file: file.to_string(),
        }),
        [CACHE_DIR, kind, file] => cache_file(cache_kind(kind)?, file).map(Member::CacheFile),
        [SIGNATURES_DIR, prefix, file] if is_snapshot_prefix(prefix) => Ok(Member::Signature {
            prefix: prefix.to_string(),
            index: signature_index(file)?,
        }),
        [SIGNATURES_DIR, ..] => Err(Refusal::SignatureName),
        [] | [_] => Err(Refusal::TopLevelFile),
        [first, ..] if is_snapshot_prefix(first) => Err(Refusal::NestedSnapshotFile),
        [CACHE_DIR, ..] => Err(Refusal::CacheShape),
        _ => Err(Refusal::Outside),
    }
}

/// `<n>.sshsig`, `n` a decimal below [`MAX_SIGNATURES`] without leading zeros.
fn signature_index(file: &str) -> Result<usize, Refusal> {
    file.strip_suffix(SIGNATURE_EXT)
        .filter(|n| !n.is_empty() && (n.len() == 1 || !n.starts_with('0')))
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && n.len() <= 2)
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&i| i < MAX_SIGNATURES)
        .ok_or(Refusal::SignatureName)
}

/// A cache kind directory: manifests, layers, fsmeta or vmdk.
pub fn cache_kind(name: &str) -> Result<CacheKind, Refusal> {
    CacheKind::from_dir(name).ok_or_else(|| Refusal::UnknownCacheKind(shown_name(name.as_bytes())))
}

/// A cache file name valid for its kind (digest-named, right extension).
pub fn cache_file(kind: CacheKind, name: &str) -> Result<CacheFile, Refusal> {
    CacheFile::parse(kind, name).ok_or_else(|| {
        let expected = match kind {
            CacheKind::Manifests => "<64 hex>.json",
            CacheKind::Layers | CacheKind::Fsmeta => "sha256_<64 hex>.erofs",
            CacheKind::Vmdk => "sha256_<64 hex>.vmdk",
        };
        Refusal::CacheFileName {
            name: shown_name(name.as_bytes()),
            kind,
            expected,
        }
    })
}

/// The members seen so far, to refuse duplicates and count them: their
/// paths go to the import's spill database, so memory does not grow with them.
#[derive(Debug)]
pub struct MemberSet<'a> {
    seen: &'a StagingIndex,
    count: usize,
    cap: usize,
}

impl<'a> MemberSet<'a> {
    /// An empty set recording into `seen`, capped at [`MAX_MEMBERS`].
    pub fn new(seen: &'a StagingIndex) -> Self {
        Self::capped(seen, MAX_MEMBERS)
    }

    fn capped(seen: &'a StagingIndex, cap: usize) -> Self {
        MemberSet {
            seen,
            count: 0,
            cap,
        }
    }

    /// Record `member`; a second occurrence, or one member too many, is refused.
    pub fn insert(&mut self, member: &Member) -> Result<()> {
        let path = member.path();
        if self.count >= self.cap {
            return Err(Refusal::TooManyMembers(self.cap).of(path));
        }
        if self.seen.insert_member(&path)? {
            self.count += 1;
            Ok(())
        } else {
            Err(Refusal::Duplicate.of(path))
        }
    }
}

/// What a member's header claims about its data, checked against the
/// grammar before any byte of it is read: directories carry none,
/// manifests and image metadata have their own small limits, and no file's
/// logical size exceeds `max_file_bytes`.
pub fn check_size(member: &Member, size: u64, max_file_bytes: u64) -> Result<(), Refusal> {
    match member {
        Member::Root
        | Member::SnapshotDir { .. }
        | Member::CacheDir
        | Member::CacheKindDir(_)
        | Member::SignaturesDir { .. } => {
            if size == 0 {
                Ok(())
            } else {
                Err(Refusal::DirectoryWithData)
            }
        }
        Member::SnapshotFile { file, .. } if file == MANIFEST_FILE && size > MAX_MANIFEST_BYTES => {
            Err(Refusal::ManifestTooLarge(size))
        }
        Member::CacheFile(f) if f.kind == CacheKind::Manifests && size > MAX_METADATA_BYTES => {
            Err(Refusal::MetadataTooLarge(size))
        }
        Member::Signature { .. } if size > MAX_SIGNATURE_BYTES => {
            Err(Refusal::SignatureTooLarge(size))
        }
        _ if size > max_file_bytes => Err(Refusal::FileTooLarge {
            size,
            limit: max_file_bytes,
        }),
        _ => Ok(()),
    }
}

/// A snapshot file other than the manifest must follow its directory's
/// manifest: `known` says whether that manifest was seen.
pub fn manifest_first(prefix: &str, known: bool) -> Result<(), Refusal> {
    if known {
        Ok(())
    } else {
        Err(Refusal::BeforeManifest {
            prefix: prefix.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::digest::Digest;

    const PREFIX: &str = "sha256-0123456789abcdef";

    fn file(path: &str) -> Result<Member> {
        classify(b'0', None, path.as_bytes())
    }

    fn dir(path: &str) -> Result<Member> {
        classify(b'5', None, path.as_bytes())
    }

    #[track_caller]
    fn refused(r: Result<Member>, text: &str) {
        match r {
            Err(e @ Error::Rejected { .. }) => {
                assert!(e.to_string().contains(text), "{e} lacks {text:?}");
                assert_eq!(e.exit_code(), crate::model::error::exit::REJECTED);
            }
            other => panic!("expected a rejection containing {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn entry_types() {
        assert_eq!(entry_kind(b'0'), Ok(EntryKind::File));
        assert_eq!(entry_kind(0), Ok(EntryKind::File));
        assert_eq!(entry_kind(b'S'), Ok(EntryKind::File));
        assert_eq!(entry_kind(b'5'), Ok(EntryKind::Directory));
        for (ty, text) in [
            (b'2', "symbolic links"),
            (b'1', "hard links"),
            (b'3', "character devices"),
            (b'4', "block devices"),
            (b'6', "FIFOs"),
            (b'g', "pax global headers"),
            (b'7', "entry type '7'"),
            (b'V', "entry type 'V'"),
        ] {
            let path = format!("{PREFIX}/upper.ext4");
            refused(classify(ty, None, path.as_bytes()), text);
        }
    }

    #[test]
    fn link_names_are_refused() {
        refused(
            classify(b'0', Some(b"/etc/passwd"), format!("{PREFIX}/x").as_bytes()),
            "link target",
        );
        assert!(classify(b'0', Some(b""), format!("{PREFIX}/x").as_bytes()).is_ok());
    }

    #[test]
    fn utf8_is_checked_on_raw_bytes() {
        let mut raw = format!("{PREFIX}/").into_bytes();
        raw.extend([0xff, 0xfe, b'x']);
        refused(classify(b'0', None, &raw), "not UTF-8");
        assert!(utf8_path("sha256-0123456789abcdef/é".as_bytes()).is_ok());
    }

    #[test]
    fn absolute_paths() {
        refused(file("/etc/passwd"), "absolute");
        refused(file(&format!("/{PREFIX}/upper.ext4")), "absolute");
        refused(dir("/"), "absolute");
    }

    #[test]
    fn dot_and_dotdot_anywhere() {
        refused(file(&format!("{PREFIX}/../x")), "'..'");
        refused(file("../x"), "'..'");
        refused(file(&format!("{PREFIX}/..")), "'..'");
        refused(file(&format!("./{PREFIX}/./upper.ext4")), "'.'");
        refused(file(&format!("././{PREFIX}/upper.ext4")), "'.'");
        refused(
            file(&format!("{PREFIX}//upper.ext4")),
            "empty path components",
        );
        refused(file(&format!("{PREFIX}/a\\b")), "not a normal file name");
        refused(dir("cache/../"), "'..'");
        refused(
            file(&format!("{PREFIX}/{}", "a".repeat(256))),
            "longer than 255",
        );
        assert!(file(&format!("{PREFIX}/{}", "a".repeat(255))).is_ok());
    }

    #[test]
    fn leading_current_dir_is_accepted() {
        assert_eq!(
            file(&format!("./{PREFIX}/upper.ext4")).unwrap(),
            Member::SnapshotFile {
                prefix: PREFIX.into(),
                file: "upper.ext4".into()
            }
        );
        assert_eq!(dir("./").unwrap(), Member::Root);
        assert_eq!(dir("./cache/").unwrap(), Member::CacheDir);
    }

    #[test]
    fn snapshot_members_have_depth_two() {
        assert_eq!(
            file(&format!("{PREFIX}/manifest.json")).unwrap().path(),
            format!("{PREFIX}/manifest.json")
        );
        refused(file("upper.ext4"), "top level");
        refused(file(&format!("{PREFIX}/a/b")), "nesting");
        refused(file("sha256-0123456789ABCDEF/x"), "members live under");
        refused(file("sha256-0123456789abcde/x"), "members live under");
        refused(file("other/x"), "members live under");
        refused(file(&format!("{PREFIX}/x/")), "may not end in '/'");
    }

    #[test]
    fn directories_only_at_depth_one() {
        assert_eq!(
            dir(&format!("{PREFIX}/")).unwrap(),
            Member::SnapshotDir {
                prefix: PREFIX.into()
            }
        );
        assert_eq!(dir(PREFIX).unwrap().path(), format!("{PREFIX}/"));
        assert_eq!(dir("cache/").unwrap(), Member::CacheDir);
        assert_eq!(
            dir("cache/layers/").unwrap(),
            Member::CacheKindDir(CacheKind::Layers)
        );
        refused(dir(&format!("{PREFIX}/sub/")), "only at depth 1");
        refused(dir("cache/layers/x/"), "only at depth 1");
        refused(dir("etc/"), "top-level directories");
        refused(dir("cache/blobs/"), "unknown cache kind");
    }

    #[test]
    fn cache_members() {
        let d = Digest::of(b"x");
        for kind in CacheKind::ALL {
            let f = CacheFile { kind, key: d };
            assert_eq!(
                file(&format!("cache/{}", f.rel_path())).unwrap(),
                Member::CacheFile(f)
            );
        }
        refused(
            file(&format!("cache/blobs/sha256_{}.erofs", d.hex())),
            "unknown cache kind",
        );
        refused(
            file(&format!("cache/layers/sha256_{}.vmdk", d.hex())),
            "not valid in cache/layers/",
        );
        refused(
            file(&format!("cache/manifests/sha256_{}.json", d.hex())),
            "not valid in cache/manifests/",
        );
        refused(file("cache/vmdk/x.vmdk"), "not valid in cache/vmdk/");
        refused(file("cache/x"), "cache members are cache/<kind>/<file>");
        refused(
            file(&format!("cache/layers/sub/sha256_{}.erofs", d.hex())),
            "cache members are",
        );
    }

    #[test]
    fn signature_members() {
        assert_eq!(
            file(&format!("signatures/{PREFIX}/15.sshsig")).unwrap(),
            Member::Signature {
                prefix: PREFIX.into(),
                index: 15
            }
        );
        assert_eq!(
            file(&signature_member(PREFIX, 0)).unwrap().path(),
            format!("signatures/{PREFIX}/0.sshsig")
        );
        assert_eq!(
            dir(&format!("signatures/{PREFIX}/")).unwrap().path(),
            format!("signatures/{PREFIX}/")
        );
        for bad in [
            "16.sshsig",
            "01.sshsig",
            "a.sshsig",
            "0.sig",
            ".sshsig",
            "0.sshsig.x",
        ] {
            refused(
                file(&format!("signatures/{PREFIX}/{bad}")),
                "signature members are",
            );
        }
        refused(file("signatures/x/0.sshsig"), "signature members are");
        refused(
            file(&format!("signatures/{PREFIX}")),
            "signature members are",
        );
        refused(dir("signatures/x/"), "directories are allowed only");
        let sig = file(&signature_member(PREFIX, 1)).unwrap();
        assert_eq!(
            check_size(&sig, MAX_SIGNATURE_BYTES + 1, u64::MAX),
            Err(Refusal::SignatureTooLarge(MAX_SIGNATURE_BYTES + 1))
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let dir_ = tempfile::tempdir().unwrap();
        let spill = StagingIndex::create(&dir_.path().join("spill.sqlite")).unwrap();
        let mut set = MemberSet::new(&spill);
        let m = file(&format!("{PREFIX}/upper.ext4")).unwrap();
        set.insert(&m).unwrap();
        let again = file(&format!("./{PREFIX}/upper.ext4")).unwrap();
        refused(set.insert(&again).map(|()| m), "duplicate member");
        let d = dir("cache").unwrap();
        set.insert(&d).unwrap();
        refused(set.insert(&dir("cache/").unwrap()).map(|()| d), "duplicate");
    }

    #[test]
    fn sizes_are_checked_at_the_header() {
        let upper = file(&format!("{PREFIX}/upper.ext4")).unwrap();
        let manifest = file(&format!("{PREFIX}/manifest.json")).unwrap();
        assert_eq!(check_size(&upper, 1 << 40, 1 << 40), Ok(()));
        assert_eq!(
            check_size(&upper, (1 << 40) + 1, 1 << 40),
            Err(Refusal::FileTooLarge {
                size: (1 << 40) + 1,
                limit: 1 << 40
            })
        );
        assert_eq!(
            check_size(&manifest, MAX_MANIFEST_BYTES + 1, u64::MAX),
            Err(Refusal::ManifestTooLarge(MAX_MANIFEST_BYTES + 1))
        );
        assert_eq!(
            check_size(&dir("cache/").unwrap(), 1, u64::MAX),
            Err(Refusal::DirectoryWithData)
        );
        assert_eq!(
            manifest_first(PREFIX, false).unwrap_err().to_string(),
            format!(
                "comes before {PREFIX}/manifest.json; the manifest must be the first member of its snapshot directory"
            )
        );
    }

    #[test]
    fn member_count_is_capped() {
        let dir_ = tempfile::tempdir().unwrap();
        let spill = StagingIndex::create(&dir_.path().join("spill.sqlite")).unwrap();
        let mut set = MemberSet::capped(&spill, 100);
        for i in 0..100 {
            set.insert(&file(&format!("{PREFIX}/f{i}")).unwrap())
                .unwrap();
        }
        let one_more = file(&format!("{PREFIX}/last")).unwrap();
        refused(
            set.insert(&one_more).map(|()| one_more),
            "the archive holds more than 100 members",
        );
        assert_eq!(
            Refusal::TooManyMembers(MAX_MEMBERS).to_string(),
            format!("the archive holds more than {MAX_MEMBERS} members")
        );
    }
}
