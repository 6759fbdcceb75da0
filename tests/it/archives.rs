//! Snapshot chains built with the sample builder, and the archives a test
//! writes from them by hand (dense or sparse, with or without the image),
//! for the import tests.

use std::path::{Path, PathBuf};

use msb_registry::model::digest::Digest;
use msb_registry::model::image::{CacheFile, ImageMetadata};

use crate::reports::ListEntry;
use crate::tarcraft::{Tar, data_extents};
use crate::util::*;

/// Snapshot directories and an image cache to build archives from.
pub struct Source {
    /// (digest, directory), root first.
    pub snaps: Vec<(Digest, PathBuf)>,
    pub image: ImageMetadata,
    pub cache: PathBuf,
}

/// A chain of `n` snapshots on one image, built under `reg`'s scratch area in `tag`.
pub fn source(reg: &Reg, tag: &str, n: usize, seed: u8) -> Source {
    let cache = reg.path(&format!("{tag}-cache"));
    let image = make_image_cache(&cache, "python:3.12", seed, &[32768, 16384]);
    let mut snaps: Vec<(Digest, PathBuf)> = Vec::new();
    for i in 0..n {
        let mut spec = SnapSpec::new(&image).label("stage", &format!("{tag}{i}"));
        spec.created_at = format!("2026-10-01T09:{:02}:00Z", i);
        spec.data
            .push(((i as u64 + 2) << 20, vec![i as u8 + seed; 8192]));
        if i % 2 == 1 {
            spec.integrity = Some("sha256");
        }
        if let Some((p, _)) = snaps.last() {
            spec = spec.parent(*p);
        }
        let dir = reg.path(&format!("{tag}/s{i}"));
        let d = make_snapshot(&dir, &spec);
        snaps.push((d, dir));
    }
    Source {
        snaps,
        image,
        cache,
    }
}

/// Append a snapshot directory: manifest first, then the upper (dense or GNU sparse).
pub fn add_snapshot(t: &mut Tar, digest: &Digest, dir: &Path, sparse: bool) {
    let prefix = digest.archive_prefix();
    t.file(
        &format!("{prefix}/manifest.json"),
        &std::fs::read(dir.join("manifest.json")).unwrap(),
    );
    let upper = std::fs::read(dir.join("upper.ext4")).unwrap();
    let path = format!("{prefix}/upper.ext4");
    if sparse {
        t.sparse(&path, upper.len() as u64, &data_extents(&upper));
    } else {
        t.file(&path, &upper);
    }
}

/// Every cache file of `image` in `cache`, metadata first.
pub fn image_files(image: &ImageMetadata) -> Vec<CacheFile> {
    let mut files = vec![CacheFile::metadata_for_ref("python:3.12")];
    files.extend(image.artifact_files());
    files
}

pub fn add_cache(t: &mut Tar, cache: &Path, files: &[CacheFile]) {
    for f in files {
        t.file(
            &format!("cache/{}", f.rel_path()),
            &std::fs::read(cache.join(f.rel_path())).unwrap(),
        );
    }
}

/// The whole chain with its image cache, as export --with-parents --with-image writes it.
pub fn full_archive(src: &Source, sparse: bool) -> Tar {
    let mut t = Tar::new();
    for (d, dir) in &src.snaps {
        add_snapshot(&mut t, d, dir, sparse);
    }
    add_cache(&mut t, &src.cache, &image_files(&src.image));
    t
}

pub fn write(reg: &Reg, name: &str, bytes: &[u8]) -> String {
    let p = reg.path(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

pub fn staging_entries(reg: &Reg) -> Vec<String> {
    std::fs::read_dir(reg.root().join("staging"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn list(reg: &Reg) -> Vec<ListEntry> {
    reg.json(&["list"])
}
