//! Verify: hold each assembled file to the upper's integrity (hashed by
//! its followers while it was assembled) and take its chunk list from the
//! map, whose every chunk was checked as it was written.

use std::path::Path;
use std::time::Duration;

use super::assemble::Assembled;
use super::follow::{Followed, Follower};
use super::resolve::RemoteSnapshot;
use crate::archive::names::Named;
use crate::db::{ImportFileRow, SnapshotFileRow};
use crate::model::chunk::CHUNK_SIZE;
use crate::model::error::{IoContext, Result};
use crate::ops::registry::Registry;
use crate::process::progress::Progress;
use crate::remote::RemoteRef;
use crate::remote::format::malformed;
use crate::store::stage::PROGRESS_STEP;
use crate::store::staged::{StagedManifest, StagedSnapshot};

impl Registry {
    /// Check an assembled snapshot: its manifest.json hashed here, each
    /// file of its map as its followers found it (the upper's integrity
    /// must hold); returns the staged snapshot for install.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn check_assembled(
        &self,
        s: &RemoteSnapshot,
        a: &mut Assembled,
        named: Named,
        source: &RemoteRef,
        journal: &mut Vec<ImportFileRow>,
        progress: &dyn Progress,
    ) -> Result<StagedSnapshot> {
        let root = self.layout().root();
        let rel = |p: &Path| {
            p.strip_prefix(root)
                .expect("staging is under the root")
                .to_string_lossy()
                .into_owned()
        };
        let upper = &s.parsed.manifest.upper;
        let mut files = Vec::new();
        let mut chunks = Vec::new();
        let manifest_len = s.config.len() as u64;
        let manifest_path = a.dir.join("manifest.json");
        let file = crate::store::files::open_regular(&manifest_path)?;
        check_length(&file, &manifest_path, manifest_len, s)?;
        let (digest, _, list) = crate::store::stage::digest_file_chunked(
            &file,
            manifest_len,
            &manifest_path,
            None,
            CHUNK_SIZE,
            progress,
        )?;
        let mut found = vec![("manifest.json".to_string(), manifest_len, digest, list)];
        for (i, f) in a.map.files.iter().enumerate() {
            let path = a.dir.join(&f.path);
            let followed = followed(&mut a.followers[i], f.size, progress)?;
            let file = crate::store::files::open_regular(&path)?;
            check_length(&file, &path, f.size, s)?;
            if let Some(integrity) = upper.integrity.as_ref().filter(|_| f.path == upper.file) {
                crate::store::stage::check_integrity(
                    &format!("{source} {}", f.path),
                    integrity,
                    followed.integrity,
                )?;
            }
            let list = followed.recut.unwrap_or_else(|| a.lists[i].clone());
            found.push((f.path.clone(), f.size, followed.digest, list));
        }
        for (file_name, len, digest, list) in found {
            let path = a.dir.join(&file_name);
            journal.push(ImportFileRow {
                member: format!(
                    "{}@{} {file_name}",
                    source.repository_name(),
                    s.parsed.digest
                ),
                staged_path: rel(&path),
                final_path: rel(&self.layout().snapshot_file(&named.name, &file_name)),
                kind: "snapshot".into(),
                size: len,
                digest,
                promote: true,
            });
            files.push(SnapshotFileRow {
                path: file_name.clone(),
                size: len,
                digest,
            });
            chunks.push((file_name, list));
        }
        Ok(StagedSnapshot {
            manifest: StagedManifest::Held(Box::new(s.parsed.clone())),
            name: named.name,
            fallback: named.fallback,
            staged_dir: rel(&a.dir),
            files,
            chunks,
        })
    }
}

/// Wait for a file's followers, moving the bar as they hash its `size`
/// logical bytes (in steps of at most [`PROGRESS_STEP`]).
fn followed(follower: &mut Follower, size: u64, progress: &dyn Progress) -> Result<Followed> {
    if let Some(offset) = follower.unlanded() {
        return Err(crate::model::error::Error::io(
            "assemble",
            "a pulled file",
            std::io::Error::other(format!("its chunk at offset {offset} was never written")),
        ));
    }
    let mut reported = 0u64;
    let mut report = |upto: u64| {
        while reported < upto {
            let step = (upto - reported).min(PROGRESS_STEP);
            progress.advance(step);
            reported += step;
        }
    };
    loop {
        let done = follower.is_done();
        report(follower.hashed().min(size));
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let outcome = follower.outcome()?;
    report(size);
    Ok(outcome)
}

/// An assembled file has the length its map (and for the upper, the
/// manifest) gives it, whatever chunk size the map was cut at.
fn check_length(file: &std::fs::File, path: &Path, len: u64, s: &RemoteSnapshot) -> Result<()> {
    let assembled = file.metadata().at("stat", path)?.len();
    if assembled == len {
        return Ok(());
    }
    Err(malformed(
        &format!("chunk map of {}", s.parsed.digest),
        format!(
            "file {} was assembled to {assembled} bytes; it has {len}",
            crate::model::text::escape(&path.file_name().unwrap_or_default().to_string_lossy())
        ),
    ))
}
