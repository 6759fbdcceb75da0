//! Repair in place: when an `import`, `add` or `pull` brings a snapshot
//! whose directory here is damaged (the same digest with a row, or any
//! snapshot whose name is held by a damaged directory without a row), the
//! install moves that directory into `quarantine/` and puts the good copy
//! in its place, in the same journaled promotion (the quarantine move is
//! its first rename, undone last).
//!
//! Damage is found cheaply, one directory at a time, only for the
//! snapshots an install brings: for a snapshot the index holds, the
//! directory's `manifest.json` must hash to the snapshot's digest and every
//! recorded file must be a regular file of its recorded size (a stat each);
//! `--repair` also re-hashes those files against their recorded digests.
//! A directory without a row in the way of a name is judged in full (its
//! upper against the manifest's size and integrity), since nothing else
//! would tell a damaged snapshot from an intact one the index lost. An
//! intact directory is never moved: the install leaves a present snapshot
//! as it is and refuses a chosen name an intact unindexed one holds (a
//! carried name falls back to the archive prefix instead).

use std::path::Path;

use serde::Serialize;

use crate::db::{SnapshotFileRow, SnapshotRow};
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::model::manifest::{MAX_MANIFEST_BYTES, Manifest, ParsedManifest};
use crate::process::progress::NoProgress;
use crate::store::files::{open_regular, read_limited};
use crate::store::layout::{Layout, SnapshotName};
use crate::store::stage::digest_file;

/// What a snapshot directory on disk is, judged against what should be there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// What should be there, as far as it was checked.
    Intact,
    /// Damaged: a good copy replaces it and it goes to `quarantine/`. Why.
    Damaged(String),
    /// Something that may be a good snapshot (intact, or a manifest this
    /// msb-registry cannot validate): never moved. What it is and what to do.
    Kept(String),
}

/// A damaged directory an install replaced by a good copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Repaired {
    /// The snapshot installed.
    pub digest: Digest,
    /// Its name (the directory repaired).
    pub name: String,
    /// Where the damaged directory went, relative to the root (`None` when
    /// the directory itself was missing).
    pub quarantined: Option<String>,
    /// What was wrong with it.
    pub why: String,
}

impl Repaired {
    /// The one line a command prints about it.
    pub fn line(&self) -> String {
        match &self.quarantined {
            Some(q) => format!(
                "repaired snapshot {} ({}): damaged copy moved to {q} ({})",
                self.name, self.digest, self.why
            ),
            None => format!(
                "repaired snapshot {} ({}): {}; the good copy is installed",
                self.name, self.digest, self.why
            ),
        }
    }
}

/// Judge the directory of snapshot `row`, whose files the index records as
/// `files`; with `deep`, re-hash them too.
pub fn examine_indexed(
    layout: &Layout,
    row: &SnapshotRow,
    files: &[SnapshotFileRow],
    deep: bool,
) -> Result<Condition> {
    let Ok(name) = row.name.parse::<SnapshotName>() else {
        return Ok(Condition::Kept(format!("its row names {:?}", row.name)));
    };
    let dir = layout.snapshot(&name);
    match dir.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Condition::Damaged("its directory is missing".into()));
        }
        Err(e) => return Err(Error::io("stat", &dir, e)),
        Ok(m) if !m.is_dir() => return Ok(Condition::Damaged("it is not a directory".into())),
        Ok(_) => {}
    }
    match read_manifest(&dir)? {
        Err(cond) => return Ok(cond),
        Ok(parsed) if parsed.digest != row.digest => return examine_valid(&dir, &parsed),
        Ok(_) => {}
    }
    for f in files {
        let path = dir.join(&f.path);
        let meta = match path.symlink_metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Condition::Damaged(format!("{} is missing", f.path)));
            }
            Err(e) => return Err(Error::io("stat", &path, e)),
        };
        if !meta.is_file() {
            return Ok(Condition::Damaged(format!(
                "{} is not a regular file",
                f.path
            )));
        }
        if meta.len() != f.size {
            return Ok(Condition::Damaged(format!(
                "{} has {} bytes, the index records {}",
                f.path,
                meta.len(),
                f.size
            )));
        }
        if deep {
            let file = open_regular(&path)?;
            let (digest, _) = digest_file(&file, f.size, &path, None, &NoProgress)?;
            if digest != f.digest {
                return Ok(Condition::Damaged(format!(
                    "{} hashes to {digest}, the index records {}",
                    f.path, f.digest
                )));
            }
        }
    }
    Ok(Condition::Intact)
}

/// Judge a directory (or other entry) of `snapshots/` that has no row, in
/// the way of a name an install wants.
pub fn examine_unindexed(dir: &Path) -> Result<Condition> {
    match dir.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Condition::Intact),
        Err(e) => return Err(Error::io("stat", dir, e)),
        Ok(m) if !m.is_dir() => return Ok(Condition::Damaged("it is not a directory".into())),
        Ok(_) => {}
    }
    match read_manifest(dir)? {
        Err(cond) => Ok(cond),
        Ok(parsed) => examine_valid(dir, &parsed),
    }
}

/// The directory's manifest, parsed; or the condition that its absence or
/// state means.
fn read_manifest(dir: &Path) -> Result<std::result::Result<ParsedManifest, Condition>> {
    let path = dir.join(crate::archive::entry::MANIFEST_FILE);
    match path.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(Condition::Damaged("manifest.json is missing".into())));
        }
        Err(e) => return Err(Error::io("stat", &path, e)),
        Ok(m) if !m.is_file() => {
            return Ok(Err(Condition::Damaged(
                "manifest.json is not a regular file".into(),
            )));
        }
        Ok(_) => {}
    }
    let Some(bytes) = read_limited(&path, MAX_MANIFEST_BYTES)? else {
        return Ok(Err(Condition::Damaged(format!(
            "manifest.json is larger than {MAX_MANIFEST_BYTES} bytes"
        ))));
    };
    Ok(match Manifest::parse(&bytes) {
        Ok(parsed) => Ok(parsed),
        Err(e) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Err(_) => Err(Condition::Damaged("manifest.json is not JSON".into())),
            Ok(_) => Err(Condition::Kept(format!(
                "its manifest.json is JSON this msb-registry cannot validate ({}): maybe microsandbox's snapshot, never moved; move the directory away yourself",
                crate::model::text::escape(&e.to_string())
            ))),
        },
    })
}

/// Judge a directory holding a valid manifest the index does not record
/// there: its upper against the manifest's size and integrity.
fn examine_valid(dir: &Path, parsed: &ParsedManifest) -> Result<Condition> {
    let upper = &parsed.manifest.upper;
    let path = dir.join(&upper.file);
    let meta = match path.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Condition::Damaged(format!("{} is missing", upper.file)));
        }
        Err(e) => return Err(Error::io("stat", &path, e)),
    };
    if !meta.is_file() {
        return Ok(Condition::Damaged(format!(
            "{} is not a regular file",
            upper.file
        )));
    }
    if meta.len() != upper.size_bytes {
        return Ok(Condition::Damaged(format!(
            "{} has {} bytes, its manifest records {}",
            upper.file,
            meta.len(),
            upper.size_bytes
        )));
    }
    if let Some(integrity) = &upper.integrity
        && let Ok((algorithm, expected)) = integrity.expected()
    {
        let file = open_regular(&path)?;
        let (_, found) = digest_file(&file, meta.len(), &path, Some(integrity), &NoProgress)?;
        if let Some(found) = found
            && found != expected
        {
            return Ok(Condition::Damaged(format!(
                "{} fails its {algorithm} integrity ({found}, its manifest records {expected})",
                upper.file
            )));
        }
    }
    Ok(Condition::Kept(format!(
        "snapshots/ holds intact snapshot {} under that name without a row: `msb-registry reindex` indexes it (then `msb-registry rm` removes it), or choose another --name",
        parsed.digest
    )))
}

/// The first free quarantine entry for `name` at `now`, not among `taken`.
pub fn quarantine_target(
    layout: &Layout,
    name: &SnapshotName,
    now: i64,
    taken: &[String],
) -> String {
    let mut n = 1;
    loop {
        let rel = Layout::quarantine_entry(name, now, n);
        if !taken.contains(&rel) && layout.resolve(&rel).symlink_metadata().is_err() {
            return rel;
        }
        n += 1;
    }
}
