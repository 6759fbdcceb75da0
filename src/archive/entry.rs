//! The closed member grammar of an archive (DESIGN §2). Every header is
//! classified here before a byte of its data is written: each rule is a
//! small named function, and each refusal is a specific
//! [`Error::Rejected`] naming the member.

use std::collections::HashSet;

use tokio_tar::EntryType;

use crate::digest::is_lower_hex;
use crate::error::{Error, Result};
use crate::image::{CacheFile, CacheKind};
use crate::manifest::is_normal_file_name;

/// The directory of cache members.
pub const CACHE_DIR: &str = "cache";

/// The name of a snapshot's manifest inside its directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The longest path component accepted (the usual file-system limit).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// The most members an archive may hold; real ones hold a few per snapshot.
pub const MAX_MEMBERS: usize = 65_536;

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
        }
    }
}

/// Check one header: its entry type, link name and path. Returns the member it names.
pub fn classify(entry_type: EntryType, link_name: Option<&[u8]>, path: &[u8]) -> Result<Member> {
    let shown = String::from_utf8_lossy(path).into_owned();
    let reject = |reason: String| Error::rejected(shown.clone(), reason);
    let kind = entry_kind(entry_type).map_err(reject)?;
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

/// Entry types: regular files, directories and GNU sparse files only.
pub fn entry_kind(entry_type: EntryType) -> Result<EntryKind, String> {
    match entry_type {
        EntryType::Regular | EntryType::GNUSparse => Ok(EntryKind::File),
        EntryType::Directory => Ok(EntryKind::Directory),
        EntryType::Symlink => Err("symbolic links are not allowed".into()),
        EntryType::Link => Err("hard links are not allowed".into()),
        EntryType::Char => Err("character devices are not allowed".into()),
        EntryType::Block => Err("block devices are not allowed".into()),
        EntryType::Fifo => Err("FIFOs are not allowed".into()),
        EntryType::XGlobalHeader => Err("pax global headers are not allowed".into()),
        other => Err(format!(
            "entry type {:?} is not allowed; only regular files, directories and GNU sparse files are",
            other.as_byte() as char
        )),
    }
}

/// No entry the grammar allows carries a link target.
pub fn no_link_name(link_name: Option<&[u8]>) -> Result<(), String> {
    match link_name {
        Some(l) if !l.is_empty() => Err("a link target on a non-link entry is not allowed".into()),
        _ => Ok(()),
    }
}

/// Paths are UTF-8, checked on the raw bytes.
pub fn utf8_path(path: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(path).map_err(|_| "path is not UTF-8".into())
}

/// No absolute paths.
pub fn not_absolute(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        Err("absolute paths are not allowed".into())
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
pub fn components(path: &str, kind: EntryKind) -> Result<Vec<&str>, String> {
    let trimmed = match (kind, path.strip_suffix('/')) {
        (EntryKind::Directory, Some(t)) => t,
        (EntryKind::File, Some(_)) => return Err("a file path may not end in '/'".into()),
        (_, None) => path,
    };
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = trimmed.split('/').collect();
    for part in &parts {
        match *part {
            ".." => return Err("'..' components are not allowed".into()),
            "." => return Err("'.' components are not allowed".into()),
            "" => return Err("empty path components are not allowed".into()),
            p if !is_normal_file_name(p) => {
                return Err(format!("path component {p:?} is not a normal file name"));
            }
            p if p.len() > MAX_COMPONENT_BYTES => {
                return Err(format!(
                    "a path component of {} bytes is longer than {MAX_COMPONENT_BYTES}",
                    p.len()
                ));
            }
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
pub fn directory_member(parts: &[&str]) -> Result<Member, String> {
    match parts {
        [] => Ok(Member::Root),
        [prefix] if is_snapshot_prefix(prefix) => Ok(Member::SnapshotDir {
            prefix: prefix.to_string(),
        }),
        [CACHE_DIR] => Ok(Member::CacheDir),
        [CACHE_DIR, kind] => cache_kind(kind).map(Member::CacheKindDir),
        [_] => Err("top-level directories are sha256-<16 hex digits>/ or cache/".into()),
        _ => Err("directories are allowed only at depth 1 and as cache/<kind>/".into()),
    }
}

/// File entries: `sha256-…/<file>` and `cache/<kind>/<file>`.
pub fn file_member(parts: &[&str]) -> Result<Member, String> {
    match parts {
        [prefix, file] if is_snapshot_prefix(prefix) => Ok(Member::SnapshotFile {
            prefix: prefix.to_string(),
            file: file.to_string(),
        }),
        [CACHE_DIR, kind, file] => cache_file(cache_kind(kind)?, file).map(Member::CacheFile),
        [] | [_] => Err("files at the top level are not allowed".into()),
        [first, ..] if is_snapshot_prefix(first) => {
            Err("snapshot members are sha256-<16 hex digits>/<file>; nesting is not allowed".into())
        }
        [CACHE_DIR, ..] => Err("cache members are cache/<kind>/<file>".into()),
        _ => Err("members live under sha256-<16 hex digits>/ or cache/".into()),
    }
}

/// A cache kind directory: manifests, layers, fsmeta or vmdk.
pub fn cache_kind(name: &str) -> Result<CacheKind, String> {
    CacheKind::from_dir(name).ok_or_else(|| {
        format!("unknown cache kind {name:?}; expected manifests, layers, fsmeta or vmdk")
    })
}

/// A cache file name valid for its kind (digest-named, right extension).
pub fn cache_file(kind: CacheKind, name: &str) -> Result<CacheFile, String> {
    CacheFile::parse(kind, name).ok_or_else(|| {
        let expected = match kind {
            CacheKind::Manifests => "<64 hex>.json",
            CacheKind::Layers | CacheKind::Fsmeta => "sha256_<64 hex>.erofs",
            CacheKind::Vmdk => "sha256_<64 hex>.vmdk",
        };
        format!("file name {name:?} is not valid in cache/{kind}/; expected {expected}")
    })
}

/// The members seen so far, to refuse duplicates.
#[derive(Debug, Default)]
pub struct MemberSet {
    seen: HashSet<Member>,
}

impl MemberSet {
    /// Record `member`; a second occurrence, or one member too many, is refused.
    pub fn insert(&mut self, member: &Member) -> Result<()> {
        if self.seen.len() >= MAX_MEMBERS {
            return Err(Error::rejected(
                member.path(),
                format!("the archive holds more than {MAX_MEMBERS} members"),
            ));
        }
        if self.seen.insert(member.clone()) {
            Ok(())
        } else {
            Err(Error::rejected(member.path(), "duplicate member"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    const PREFIX: &str = "sha256-0123456789abcdef";

    fn file(path: &str) -> Result<Member> {
        classify(EntryType::Regular, None, path.as_bytes())
    }

    fn dir(path: &str) -> Result<Member> {
        classify(EntryType::Directory, None, path.as_bytes())
    }

    #[track_caller]
    fn refused(r: Result<Member>, text: &str) {
        match r {
            Err(e @ Error::Rejected { .. }) => {
                assert!(e.to_string().contains(text), "{e} lacks {text:?}");
                assert_eq!(e.exit_code(), crate::error::exit::REJECTED);
            }
            other => panic!("expected a rejection containing {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn entry_types() {
        assert_eq!(entry_kind(EntryType::Regular), Ok(EntryKind::File));
        assert_eq!(entry_kind(EntryType::new(0)), Ok(EntryKind::File));
        assert_eq!(entry_kind(EntryType::GNUSparse), Ok(EntryKind::File));
        assert_eq!(entry_kind(EntryType::Directory), Ok(EntryKind::Directory));
        for (ty, text) in [
            (EntryType::Symlink, "symbolic links"),
            (EntryType::Link, "hard links"),
            (EntryType::Char, "character devices"),
            (EntryType::Block, "block devices"),
            (EntryType::Fifo, "FIFOs"),
            (EntryType::XGlobalHeader, "pax global headers"),
            (EntryType::Continuous, "entry type '7'"),
            (EntryType::new(b'V'), "entry type 'V'"),
        ] {
            let path = format!("{PREFIX}/upper.ext4");
            refused(classify(ty, None, path.as_bytes()), text);
        }
    }

    #[test]
    fn link_names_are_refused() {
        refused(
            classify(
                EntryType::Regular,
                Some(b"/etc/passwd"),
                format!("{PREFIX}/x").as_bytes(),
            ),
            "link target",
        );
        assert!(
            classify(
                EntryType::Regular,
                Some(b""),
                format!("{PREFIX}/x").as_bytes()
            )
            .is_ok()
        );
    }

    #[test]
    fn utf8_is_checked_on_raw_bytes() {
        let mut raw = format!("{PREFIX}/").into_bytes();
        raw.extend([0xff, 0xfe, b'x']);
        refused(classify(EntryType::Regular, None, &raw), "not UTF-8");
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
    fn duplicates_are_refused() {
        let mut set = MemberSet::default();
        let m = file(&format!("{PREFIX}/upper.ext4")).unwrap();
        set.insert(&m).unwrap();
        let again = file(&format!("./{PREFIX}/upper.ext4")).unwrap();
        refused(set.insert(&again).map(|()| m), "duplicate member");
        let d = dir("cache").unwrap();
        set.insert(&d).unwrap();
        refused(set.insert(&dir("cache/").unwrap()).map(|()| d), "duplicate");
    }

    #[test]
    fn member_count_is_capped() {
        let mut set = MemberSet::default();
        for i in 0..MAX_MEMBERS {
            set.insert(&file(&format!("{PREFIX}/f{i}")).unwrap())
                .unwrap();
        }
        let one_more = file(&format!("{PREFIX}/last")).unwrap();
        refused(
            set.insert(&one_more).map(|()| one_more),
            "more than 65536 members",
        );
    }
}
