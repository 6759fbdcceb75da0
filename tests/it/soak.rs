//! Concurrency soak through the real binary: imports of different archives
//! sharing an image (and a second image sharing a layer with it), each
//! removed and imported again; exports of an imported chain; gc in a loop;
//! all at once for `MSB_SOAK_SECS` (default 5) seconds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use msb_registry::model::image::{CacheFile, CacheKind};

use crate::crash::{assert_clean, fixture};
use crate::util::*;

/// Archives of one snapshot each: three on the main image, one on an
/// image that shares the main image's first layer.
fn soak_archives(src: &Reg) -> Vec<PathBuf> {
    let cache = src.path("soak-cache");
    let image = make_image_cache(&cache, "python:3.12", 7, &[32768, 16384]);
    let mut archives = Vec::new();
    for i in 0..3u8 {
        let mut spec = SnapSpec::new(&image).label("soak", &i.to_string());
        spec.data.push((3 << 20, vec![i + 0x31; 16384]));
        let dir = src.path(&format!("soak/a{i}"));
        make_snapshot(&dir, &spec);
        let name = format!("a{i}");
        let c = cache.to_str().unwrap().to_string();
        let mut args = vec!["add", dir.to_str().unwrap(), "--name", &name];
        if i == 0 {
            args.extend(["--cache-dir", &c]);
        }
        src.run(&args).ok();
        archives.push(export(src, &name));
    }

    let cache2 = src.path("soak-cache2");
    let shared = CacheFile {
        kind: CacheKind::Layers,
        key: image.layers[0].diff_id,
    };
    std::fs::create_dir_all(cache2.join("layers")).unwrap();
    std::fs::copy(
        cache.join(shared.rel_path()),
        cache2.join(shared.rel_path()),
    )
    .unwrap();
    let own = make_image_cache(&src.path("soak-own"), "scratch", 5, &[8192]);
    let own_layer = CacheFile {
        kind: CacheKind::Layers,
        key: own.layers[0].diff_id,
    };
    std::fs::copy(
        src.path("soak-own").join(own_layer.rel_path()),
        cache2.join(own_layer.rel_path()),
    )
    .unwrap();
    let layers = vec![image.layers[0].clone(), own.layers[0].clone()];
    let image2 = write_image_metadata(&cache2, "debian:12", 11, layers);
    let mut spec = SnapSpec::new(&image2).label("soak", "debian");
    spec.image.0 = "debian:12".into();
    let dir = src.path("soak/d");
    make_snapshot(&dir, &spec);
    src.run(&[
        "add",
        dir.to_str().unwrap(),
        "--name",
        "a3",
        "--cache-dir",
        cache2.to_str().unwrap(),
    ])
    .ok();
    archives.push(export(src, "a3"));
    archives
}

fn export(src: &Reg, name: &str) -> PathBuf {
    let out = src.path(&format!("{name}.tar.zst"));
    src.run(&["export", name, "--with-image", "-o", out.to_str().unwrap()])
        .ok();
    out
}

/// Every image a snapshot pins still has its metadata, fsmeta, vmdk and layers.
fn assert_pinned_images_whole(reg: &Reg) {
    let files: Vec<serde_json::Value> = reg.json(&[
        "sql",
        "SELECT i.metadata_file AS path FROM images i \
           WHERE i.manifest_digest IN (SELECT image_manifest_digest FROM snapshots) \
         UNION ALL SELECT 'fsmeta/sha256_' || substr(i.manifest_digest, 8) || '.erofs' FROM images i \
           WHERE i.manifest_digest IN (SELECT image_manifest_digest FROM snapshots) \
         UNION ALL SELECT 'vmdk/sha256_' || substr(i.manifest_digest, 8) || '.vmdk' FROM images i \
           WHERE i.manifest_digest IN (SELECT image_manifest_digest FROM snapshots) \
         UNION ALL SELECT 'layers/sha256_' || substr(l.diff_id, 8) || '.erofs' FROM image_layers l \
           WHERE l.image IN (SELECT image_manifest_digest FROM snapshots)",
    ]);
    assert!(files.len() >= 5, "pinned image files: {files:?}");
    for f in files {
        let path = f["path"].as_str().unwrap();
        assert!(
            reg.root().join("cache").join(path).is_file(),
            "pinned image file cache/{path} is gone"
        );
    }
}

fn run_in(root: &Path, args: &[&str]) -> Run {
    Run::from(command_at(root, args).output().unwrap())
}

#[test]
fn imports_exports_and_gc_at_once() {
    let f = fixture();
    let secs: u64 = std::env::var("MSB_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let src = Reg::new();
    let archives = soak_archives(&src);
    let reg = Reg::new();
    let main = f.main.to_str().unwrap();
    reg.run(&["import", main, "--name", "app"]).ok();
    let root = reg.root();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (imports, exports, reimports, gcs) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let main_bytes = std::fs::read(&f.main).unwrap();
    std::thread::scope(|s| {
        for (i, archive) in archives.iter().enumerate() {
            let (root, imports) = (&root, &imports);
            s.spawn(move || {
                let name = format!("w{i}");
                while Instant::now() < deadline {
                    run_in(
                        root,
                        &["import", archive.to_str().unwrap(), "--name", &name],
                    )
                    .ok();
                    imports.fetch_add(1, Ordering::Relaxed);
                    run_in(root, &["rm", &name]).ok();
                }
                run_in(
                    root,
                    &["import", archive.to_str().unwrap(), "--name", &name],
                )
                .ok();
                imports.fetch_add(1, Ordering::Relaxed);
            });
        }
        s.spawn(|| {
            let mut n = 0;
            while Instant::now() < deadline {
                let out = reg.path(&format!("e{n}.tar.zst"));
                let o = out.to_str().unwrap();
                run_in(
                    &root,
                    &["export", "app", "--with-parents", "--with-image", "-o", o],
                )
                .ok();
                assert_eq!(
                    std::fs::read(&out).unwrap(),
                    main_bytes,
                    "export {n} differs from the archive it was imported from"
                );
                let listed = Command::new("tar")
                    .args(["--zstd", "-tf", o])
                    .output()
                    .unwrap();
                assert!(listed.status.success(), "tar cannot list export {n}");
                if n % 4 == 0 {
                    let fresh = reg.path(&format!("fresh{n}"));
                    run_in(&fresh, &["import", o]).ok();
                    run_in(&fresh, &["verify", "--content"]).ok();
                    reimports.fetch_add(1, Ordering::Relaxed);
                }
                std::fs::remove_file(&out).unwrap();
                exports.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        });
        s.spawn(|| {
            while Instant::now() < deadline {
                run_in(&root, &["gc"]).ok();
                gcs.fetch_add(1, Ordering::Relaxed);
            }
        });
    });
    run_in(&root, &["verify", "--content"]).ok();
    assert_pinned_images_whole(&reg);
    run_in(&root, &["gc"]).ok();
    assert_clean(&reg);
    assert_pinned_images_whole(&reg);
    let list: Vec<serde_json::Value> = reg.json(&["list"]);
    assert_eq!(list.len(), 3 + archives.len());
    eprintln!(
        "soak {secs}s: {} imports of {} archives, {} exports ({} re-imported elsewhere), {} gc runs",
        imports.into_inner(),
        archives.len(),
        exports.into_inner(),
        reimports.into_inner(),
        gcs.into_inner()
    );
}
