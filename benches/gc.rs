//! gc at scale: 10,000 snapshots, 500 images and 100,000 cache files (small
//! files, rows inserted through the library in one transaction), then the
//! time of `gc --dry-run` (survey + plan), a full gc, a gc with nothing left
//! to do, and a plain `verify`.
//!
//! Run: `cargo bench --bench gc`. Targets: dry run <= 2 s, full gc <= 5 s.

use std::path::Path;
use std::time::Instant;

use msb_registry::NoProgress;
use msb_registry::db::{self, SnapshotFileRow, SnapshotRow};
use msb_registry::model::digest::{Digest, ExtentsSha256, LogicalSink};
use msb_registry::model::image::{CacheFile, CacheKind, ImageMetadata, LayerInfo};
use msb_registry::{GcOptions, Registry, gc};

const SNAPSHOTS: usize = 10_000;
const IMAGES: usize = 500;
const PINNED_IMAGES: usize = 400;
const LAYERS_PER_IMAGE: usize = 200;
const LAYER_STRIDE: usize = 197;
const DEBRIS_FILES: usize = 1_000;
const GHOST_SNAPSHOTS: usize = 100;

fn extents(bytes: &[u8]) -> Digest {
    let mut h = ExtentsSha256::new(bytes.len() as u64);
    h.data(bytes);
    h.finish().0
}

fn write(path: &Path, bytes: &[u8]) -> Digest {
    std::fs::write(path, bytes).unwrap();
    extents(bytes)
}

fn generate(registry: &mut Registry) -> usize {
    let layout = registry.layout().clone();
    let pool = IMAGES * LAYER_STRIDE;
    let layer_digest = |n: usize| Digest::of(format!("layer-{n}").as_bytes());
    let image_ref = |i: usize| format!("bench.example/image-{i}:latest");
    let mut cache_rows = Vec::new();
    let mut images = Vec::new();
    for n in 0..pool {
        let file = CacheFile {
            kind: CacheKind::Layers,
            key: layer_digest(n),
        };
        let bytes = format!("layer {n}").into_bytes();
        let digest = write(&layout.cache_file(&file), &bytes);
        cache_rows.push((file, bytes.len() as u64, digest));
    }
    for i in 0..IMAGES {
        let manifest_digest = Digest::of(format!("image-{i}").as_bytes());
        let layers: Vec<LayerInfo> = (0..LAYERS_PER_IMAGE)
            .map(|k| {
                let n = (i * LAYER_STRIDE + k) % pool;
                LayerInfo {
                    digest: Digest::of(format!("blob-{n}").as_bytes()),
                    media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    size_bytes: 1,
                    diff_id: layer_digest(n),
                }
            })
            .collect();
        let meta = ImageMetadata {
            manifest_digest,
            config_digest: Digest::of(format!("config-{i}").as_bytes()),
            raw_manifest_json: String::new(),
            raw_config_json: String::new(),
            config: serde_json::Map::new(),
            layers,
        };
        let metadata_file = CacheFile::metadata_for_ref(&image_ref(i));
        for file in [
            metadata_file,
            CacheFile {
                kind: CacheKind::Fsmeta,
                key: manifest_digest,
            },
            CacheFile {
                kind: CacheKind::Vmdk,
                key: manifest_digest,
            },
        ] {
            let bytes = format!("{} of image {i}", file.kind).into_bytes();
            let digest = write(&layout.cache_file(&file), &bytes);
            cache_rows.push((file, bytes.len() as u64, digest));
        }
        images.push((meta, metadata_file, image_ref(i)));
    }
    let mut snapshots = Vec::new();
    for s in 0..SNAPSHOTS {
        let image = s % PINNED_IMAGES;
        let name = format!("snap-{s:05}");
        let dir = layout.snapshots().join(&name);
        std::fs::create_dir(&dir).unwrap();
        let manifest = format!("{{\"snapshot\":{s}}}").into_bytes();
        let upper = format!("upper of {s}").into_bytes();
        let files = vec![
            SnapshotFileRow {
                path: "manifest.json".into(),
                size: manifest.len() as u64,
                digest: write(&dir.join("manifest.json"), &manifest),
            },
            SnapshotFileRow {
                path: "upper.ext4".into(),
                size: upper.len() as u64,
                digest: write(&dir.join("upper.ext4"), &upper),
            },
        ];
        let row = SnapshotRow {
            digest: Digest::of(name.as_bytes()),
            name,
            parent: (s > 0).then(|| Digest::of(format!("snap-{:05}", s - 1).as_bytes())),
            image_ref: image_ref(image),
            image_manifest_digest: images[image].0.manifest_digest,
            format: "raw".into(),
            fstype: "ext4".into(),
            upper_file: "upper.ext4".into(),
            size_bytes: upper.len() as u64,
            integrity_algorithm: None,
            integrity_digest: None,
            created_at: "2026-10-01T09:00:00Z".into(),
            source_sandbox: None,
            labels: Default::default(),
            added_at: 0,
        };
        snapshots.push((row, files));
    }
    for d in 0..DEBRIS_FILES {
        std::fs::write(
            layout
                .cache_kind(CacheKind::Layers)
                .join(format!("stray-{d}")),
            b"x",
        )
        .unwrap();
    }
    for g in 0..GHOST_SNAPSHOTS {
        let dir = layout.snapshots().join(format!("ghost-{g}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("upper.ext4"), b"ghost").unwrap();
    }
    let tx = registry.db_mut().write().unwrap();
    for (file, size, digest) in &cache_rows {
        db::images::insert_cache_file(&tx, file, *size, digest, 0).unwrap();
    }
    for (meta, metadata_file, reference) in &images {
        db::images::insert_image(&tx, meta, metadata_file, Some(reference)).unwrap();
    }
    for (row, files) in &snapshots {
        db::snapshots::insert_snapshot(&tx, row, files).unwrap();
    }
    tx.commit().unwrap();
    cache_rows.len()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::open(dir.path().join("root")).unwrap();
    let t = Instant::now();
    let cache_files = generate(&mut registry);
    println!(
        "generated {SNAPSHOTS} snapshots, {IMAGES} images ({PINNED_IMAGES} pinned), \
         {cache_files} cache files, {DEBRIS_FILES} stray files, {GHOST_SNAPSHOTS} ghost dirs in {:.2?}",
        t.elapsed()
    );

    breakdown(&registry);
    for run in 1..=3 {
        let t = Instant::now();
        let r = registry.gc(&gc_opts(true), &NoProgress).unwrap();
        println!(
            "gc --dry-run #{run}: {:.3?} (plan: {} removals, {} files, {} bytes)",
            t.elapsed(),
            r.removed.len(),
            r.files,
            r.bytes
        );
    }
    let t = Instant::now();
    let r = registry.gc(&gc_opts(false), &NoProgress).unwrap();
    println!(
        "gc (full): {:.3?} (removed {} items, {} files, {} bytes)",
        t.elapsed(),
        r.removed.len(),
        r.files,
        r.bytes
    );
    for t in &r.totals {
        println!("  {:<8} {:>6} {:>9} B", t.kind.as_str(), t.count, t.bytes);
    }
    let t = Instant::now();
    let again = registry.gc(&gc_opts(false), &NoProgress).unwrap();
    println!(
        "gc (nothing left): {:.3?} ({} removals)",
        t.elapsed(),
        again.removed.len()
    );
    assert!(again.removed.is_empty());
    let t = Instant::now();
    let v = registry.verify(None, false, &NoProgress).unwrap();
    println!(
        "verify: {:.3?} (ok {}, {} files checked)",
        t.elapsed(),
        v.ok,
        v.checked_files
    );
    assert!(v.ok && v.debris.is_empty());
}

/// Where a dry run's time goes: each query, the disk listing, the plan.
fn breakdown(registry: &Registry) {
    let conn = registry.db().conn();
    let time = |what: &str, f: &mut dyn FnMut() -> usize| {
        let t = Instant::now();
        let n = f();
        println!("  {what:<28} {:>9.3?} ({n} rows)", t.elapsed());
    };
    println!("dry-run breakdown:");
    let refs = db::gc::pinned_image_refs(conn).unwrap();
    time("pinned_image_refs", &mut || {
        db::gc::pinned_image_refs(conn).unwrap().len()
    });
    let live: Vec<String> = refs
        .iter()
        .map(|r| CacheFile::metadata_for_ref(r).rel_path())
        .collect();
    time("unpinned_images", &mut || {
        db::gc::unpinned_images(conn).unwrap().len()
    });
    time("unreachable_cache_files", &mut || {
        db::gc::unreachable_cache_files(conn, &live).unwrap().len()
    });
    time("cache_paths", &mut || {
        db::gc::cache_paths(conn).unwrap().len()
    });
    time("snapshot_file_names", &mut || {
        db::gc::snapshot_file_names(conn).unwrap().len()
    });
    let survey = gc::survey(registry).unwrap();
    time("list_disk", &mut || {
        let l = gc::list_disk(registry.layout(), &survey.index).unwrap();
        l.cache.len() + l.snapshots.len() + l.staging.len()
    });
    time("plan", &mut || {
        gc::plan(&survey.index, &survey.listing, &survey.live, 0, 0)
            .removals
            .len()
    });
}

/// gc options with no grace period, so freshly written debris counts.
fn gc_opts(dry_run: bool) -> GcOptions {
    GcOptions {
        dry_run,
        grace: 0,
        ..GcOptions::default()
    }
}
