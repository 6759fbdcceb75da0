//! What an export will write, decided from the index alone before a byte
//! is streamed: the snapshots (root first), each one's files with the size
//! and content digest the index recorded, and the head's image artifacts.
//!
//! The plan is owned data, so the database connection is never held while
//! the archive streams.

use crate::archive::entry::{MAX_MEMBERS, signature_member};
use crate::db::{self, SnapshotRow};
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::model::manifest::unix_seconds;
use crate::ops::registry::Registry;
use crate::store::layout::SnapshotName;
use crate::trust::sshsig::MAX_SIGNATURES;

pub use crate::archive::export_stream::PlannedFile;

/// Name of the manifest inside a snapshot directory; always its first member.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Which snapshots and artifacts an export covers.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Export the head's whole ancestry, root first.
    pub with_parents: bool,
    /// Export the chain down to, but not including, this snapshot.
    pub base: Option<String>,
    /// Add the head's pinned image artifacts.
    pub with_image: bool,
}

/// Everything an export writes, in archive order.
#[derive(Debug, Clone)]
pub struct ExportPlan {
    /// The snapshot the export was asked for.
    pub head: Digest,
    /// Exported snapshots, root first, head last.
    pub snapshots: Vec<Digest>,
    /// Snapshot members then cache members, in the order they are written.
    pub files: Vec<PlannedFile>,
    /// The cache files included, as `<kind>/<file>`.
    pub cache_files: Vec<String>,
    /// The parent the first exported snapshot names, which the archive does
    /// not hold; `None` when the archive is self-contained.
    pub missing_parent: Option<Digest>,
    /// The exported snapshots' signatures, written after every other member
    /// (not in `--dense` archives).
    pub signatures: Vec<PlannedSignature>,
}

/// A signature member of an export.
#[derive(Debug, Clone)]
pub struct PlannedSignature {
    /// `signatures/<prefix>/<n>.sshsig`.
    pub member: String,
    /// The armored signature.
    pub bytes: Vec<u8>,
    /// Its snapshot's `created_at`, as for its other members.
    pub mtime: u64,
}

impl Registry {
    /// Decide what exporting `reference` with `selection` writes, from the
    /// index only.
    pub fn export_plan(&self, reference: &str, selection: &Selection) -> Result<ExportPlan> {
        let head = self.resolve(reference)?;
        let chain = self.chain(&head, selection)?;
        let mut files = Vec::new();
        let mut per_snapshot = Vec::with_capacity(chain.len());
        for snapshot in &chain {
            let members = self.snapshot_members(snapshot)?;
            per_snapshot.push(members.len());
            files.extend(members);
        }
        let mut cache_files = Vec::new();
        if selection.with_image {
            for file in self.image_members(&head)? {
                cache_files.push(
                    file.member
                        .strip_prefix("cache/")
                        .unwrap_or(&file.member)
                        .to_string(),
                );
                files.push(file);
            }
        }
        let missing_parent = chain.first().and_then(|s| s.parent);
        let mut signatures = Vec::new();
        for (snapshot, members) in chain.iter().zip(per_snapshot.iter_mut()) {
            let mtime = created_at(snapshot)?;
            let rows = db::signatures::signatures_of(self.db().conn(), &snapshot.digest)?;
            for (i, row) in rows.into_iter().take(MAX_SIGNATURES).enumerate() {
                signatures.push(PlannedSignature {
                    member: signature_member(&snapshot.digest.archive_prefix(), i),
                    bytes: row.signature.into_bytes(),
                    mtime,
                });
                *members += 1;
            }
        }
        within_member_bound(&chain, &per_snapshot, files.len() + signatures.len())?;
        Ok(ExportPlan {
            signatures,
            missing_parent,
            head: head.digest,
            snapshots: chain.iter().map(|s| s.digest).collect(),
            files,
            cache_files,
        })
    }

    fn chain(&self, head: &SnapshotRow, selection: &Selection) -> Result<Vec<SnapshotRow>> {
        if !selection.with_parents && selection.base.is_none() {
            return Ok(vec![head.clone()]);
        }
        let conn = self.db().conn();
        let mut lineage = db::snapshots::ancestors(conn, &head.digest)?;
        if let Some(base_ref) = &selection.base {
            let base = self.resolve_base(base_ref)?;
            let at = lineage
                .iter()
                .position(|r| r.digest == base)
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "--base {base_ref} ({base}) is not an ancestor of {}",
                        head.digest
                    ))
                })?;
            if base == head.digest {
                return Err(Error::Usage(format!(
                    "--base {base_ref} is the head itself; there is nothing to export"
                )));
            }
            lineage.drain(..=at);
        }
        if let Some(pos) = lineage.iter().position(|r| r.name.is_none()) {
            return Err(Error::MissingParent {
                parent: lineage[pos].digest,
                child: lineage.get(pos + 1).map_or(head.digest, |r| r.digest),
            });
        }
        lineage
            .iter()
            .map(|r| {
                db::snapshots::snapshot_by_digest(conn, &r.digest)?.ok_or_else(|| Error::NotFound {
                    what: "snapshot",
                    reference: r.digest.to_string(),
                })
            })
            .collect()
    }

    /// A base is usually in the registry; a full digest of an ancestor the
    /// registry lacks (a shallow chain) is accepted too.
    fn resolve_base(&self, reference: &str) -> Result<Digest> {
        match self.resolve(reference) {
            Ok(row) => Ok(row.digest),
            Err(Error::NotFound { .. }) if reference.parse::<Digest>().is_ok() => {
                Ok(reference.parse().expect("checked above"))
            }
            Err(e) => Err(e),
        }
    }

    fn snapshot_members(&self, snapshot: &SnapshotRow) -> Result<Vec<PlannedFile>> {
        let name: SnapshotName = snapshot.name.parse()?;
        let mtime = created_at(snapshot)?;
        let mut rows = db::snapshots::snapshot_files(self.db().conn(), &snapshot.digest)?;
        rows.sort_by(|a, b| {
            (a.path != MANIFEST_FILE, &a.path).cmp(&(b.path != MANIFEST_FILE, &b.path))
        });
        if rows.first().is_none_or(|r| r.path != MANIFEST_FILE) {
            return Err(Error::NotFound {
                what: "manifest row",
                reference: format!("{} ({})", snapshot.name, snapshot.digest),
            });
        }
        let prefix = snapshot.digest.archive_prefix();
        let dir = self.snapshot_dir(&name);
        Ok(rows
            .into_iter()
            .map(|r| PlannedFile {
                carried_name: (r.path == MANIFEST_FILE).then(|| name.to_string()),
                member: format!("{prefix}/{}", r.path),
                path: self.layout().snapshot_file(&dir, &r.path),
                size: r.size,
                digest: r.digest,
                mtime,
            })
            .collect())
    }

    fn image_members(&self, head: &SnapshotRow) -> Result<Vec<PlannedFile>> {
        let conn = self.db().conn();
        let image =
            db::images::image_by_digest(conn, &head.image_manifest_digest)?.ok_or_else(|| {
                Error::NotFound {
                    what: "image",
                    reference: format!(
                        "{}@{} (add the snapshot with --cache-dir to cache it)",
                        head.image_ref, head.image_manifest_digest
                    ),
                }
            })?;
        let mtime = created_at(head)?;
        db::images::image_cache_files(conn, &image)?
            .into_iter()
            .map(|(file, row)| {
                let row = row.ok_or_else(|| Error::NotFound {
                    what: "cache file",
                    reference: format!("cache/{}", file.rel_path()),
                })?;
                Ok(PlannedFile {
                    member: format!("cache/{}", file.rel_path()),
                    path: self.layout().cache_file(&file),
                    size: row.size,
                    digest: row.digest,
                    mtime,
                    carried_name: None,
                })
            })
            .collect()
    }
}

/// An export holds no more members than import takes ([`MAX_MEMBERS`]):
/// refused before a byte is written, naming a `--base` that splits the
/// chain (`per_snapshot` counts each snapshot's members, root first; the
/// rest of `total` is the image's).
fn within_member_bound(chain: &[SnapshotRow], per_snapshot: &[usize], total: usize) -> Result<()> {
    if total <= MAX_MEMBERS {
        return Ok(());
    }
    let image = total - per_snapshot.iter().sum::<usize>();
    let mut tail = image;
    let mut first = chain.len();
    while first > 0 && tail + per_snapshot[first - 1] <= MAX_MEMBERS {
        first -= 1;
        tail += per_snapshot[first];
    }
    let hint = match first {
        0 => unreachable!("the whole chain is over the bound"),
        _ if first == chain.len() => format!(
            "snapshot {} alone holds {} files; no archive of it can be imported",
            chain[first - 1].digest,
            per_snapshot[first - 1]
        ),
        _ => format!(
            "export it in parts: --base {base} writes the newest {} snapshots, then export \
             {base} the same way for the older ones",
            chain.len() - first,
            base = chain[first - 1].digest,
        ),
    };
    Err(Error::Usage(format!(
        "the archive would hold {total} members, and import takes at most {MAX_MEMBERS} \
         (about {} snapshots of two files each); {hint}",
        MAX_MEMBERS / 2
    )))
}

fn created_at(snapshot: &SnapshotRow) -> Result<u64> {
    unix_seconds(&snapshot.created_at).map_err(|source| Error::Manifest {
        path: format!("{} ({})", snapshot.name, snapshot.digest),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::entry::Refusal;

    fn row(i: usize) -> SnapshotRow {
        let digest = Digest::of(&i.to_le_bytes());
        SnapshotRow::fixture(digest, &format!("s{i}"), None, Digest::of(b"image"), 4096)
    }

    /// Export's bound is import's: an archive of exactly [`MAX_MEMBERS`]
    /// members is written, one more is refused quoting the number import's
    /// own refusal quotes, with a `--base` whose newer part fits.
    #[test]
    fn export_refuses_exactly_what_import_refuses() {
        let snapshots = MAX_MEMBERS / 2;
        let chain: Vec<SnapshotRow> = (0..snapshots).map(row).collect();
        let per_snapshot = vec![2; snapshots];
        within_member_bound(&chain, &per_snapshot, MAX_MEMBERS).unwrap();
        let refused = within_member_bound(&chain, &per_snapshot, MAX_MEMBERS + 1)
            .unwrap_err()
            .to_string();
        let imports = Refusal::TooManyMembers(MAX_MEMBERS).to_string();
        let bound = format!("at most {MAX_MEMBERS}");
        assert!(imports.ends_with(&format!("more than {MAX_MEMBERS} members")));
        assert!(refused.contains(&bound), "{refused}");
        assert!(
            refused.contains(&format!(
                "--base {} writes the newest {} snapshots",
                chain[0].digest,
                snapshots - 1
            )),
            "{refused}"
        );
    }
}
