//! `import` through the real binary, the success path: interop with
//! microsandbox's archives and GNU tar's, idempotence, stdin, concurrency.
//! Every test ends with `verify --content`. Hostile input is in
//! `import_hostile.rs`; crashes at every journal step in `crash.rs`.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use msb_registry::model::digest::Digest;
use msb_registry::model::image::CacheKind;

use crate::archives::*;
use crate::reports::ImportReport;
use crate::tarcraft::{Tar, zstd};
use crate::util::*;

// ---------------------------------------------------------------- interop

#[test]
fn imports_both_microsandbox_fixtures() {
    let Some(fx) = fixtures() else { return };
    let reg = Reg::new();
    let single: ImportReport =
        reg.json(&["import", fx.join("seed-save-single.tar").to_str().unwrap()]);
    assert_eq!(
        single.head.to_string(),
        "sha256:568b10e497e962ed6382eff917cdd22c70a89d9efd091c5289ca869ea523e167"
    );
    assert_eq!(single.name, "sha256-568b10e497e962ed");

    let chain: ImportReport = reg.json(&[
        "import",
        fx.join("seed-save-chain-with-image.tar.zst")
            .to_str()
            .unwrap(),
    ]);
    let expected: Vec<String> = [
        "sha256:d1d9a1389dee0baa469d75fc95077a0989448211d264b2731543e3429ad4ce76",
        "sha256:f14d557350c564277f3c4c8c578694cb7a7cbabccc776f2321050ef4a628ab4f",
        "sha256:93344f4a0fdffb885b566c90ee72b9c0ec5b8c744f3ad6b7628bbe695234da03",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(
        chain
            .imported
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(chain.head.to_string(), expected[2]);
    assert_eq!(chain.cache_files_installed, 5);
    let image: Vec<serde_json::Value> = reg.json(&["sql", "SELECT manifest_digest FROM images"]);
    assert_eq!(
        image[0]["manifest_digest"],
        "sha256:e01fd5675df168746ca34524be97d8264a89f40c1361b28ec771df9cf1cde99d"
    );
    // Written dense by microsandbox, restored sparse here.
    let upper = reg
        .root()
        .join("snapshots/sha256-d1d9a1389dee0baa/upper.ext4");
    let m = std::fs::metadata(&upper).unwrap();
    assert_eq!(m.len(), 32 << 20);
    assert!(
        m.blocks() * 512 < 4 << 20,
        "{} bytes allocated",
        m.blocks() * 512
    );
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn stdin_import_and_named_head() {
    let reg = Reg::new();
    let src = source(&reg, "in", 3, 1);
    let bytes = zstd(&full_archive(&src, true).finish());
    let r: ImportReport = reg
        .run_stdin(&["import", "-", "--name", "app", "--json"], &bytes)
        .ok()
        .json();
    assert_eq!(r.name, "app");
    assert_eq!(r.head, src.snaps[2].0);
    let names: BTreeSet<String> = list(&reg).into_iter().map(|e| e.name).collect();
    let expected: BTreeSet<String> = [
        "app".to_string(),
        src.snaps[0].0.archive_prefix(),
        src.snaps[1].0.archive_prefix(),
    ]
    .into();
    assert_eq!(names, expected);
    let sources: Vec<serde_json::Value> = reg.json(&["sql", "SELECT source, state FROM imports"]);
    assert_eq!(sources[0]["source"], "-");
    assert_eq!(sources[0]["state"], "done");

    // A refusal of the whole stream names stdin as the archive.
    let before = (reg.tree(), reg.dump());
    let out = reg.run_stdin(&["import", "-"], &bytes[..bytes.len() / 2]);
    assert_eq!(out.code, 6);
    let stderr = out.stderr;
    assert!(
        stderr.starts_with("error: rejected archive: stdin: corrupt or truncated zstd stream"),
        "{stderr}"
    );
    assert_eq!((reg.tree(), reg.dump()), before, "registry changed");
    reg.run(&["verify", "--content"]).ok();
}

// ------------------------------------------------------- own archives

#[test]
fn dense_and_sparse_archives_import_and_are_idempotent() {
    for (sparse, compressed) in [(false, false), (true, true), (true, false), (false, true)] {
        let reg = Reg::new();
        let src = source(&reg, "c", 3, 5);
        let tar = full_archive(&src, sparse).finish();
        let bytes = if compressed { zstd(&tar) } else { tar };
        let path = write(&reg, "a.tar", &bytes);
        let r: ImportReport = reg.json(&["import", &path]);
        let digests: Vec<Digest> = src.snaps.iter().map(|(d, _)| *d).collect();
        assert_eq!(r.imported, digests);
        assert_eq!(r.head, digests[2]);
        assert_eq!(r.cache_files_installed, 5);
        let l = list(&reg);
        assert_eq!(l.len(), 3);
        assert!(
            l.iter()
                .any(|e| e.digest == digests[2] && e.parent == Some(digests[1]))
        );
        for (d, dir) in &src.snaps {
            let got = reg
                .root()
                .join(format!("snapshots/{}/upper.ext4", d.archive_prefix()));
            assert_eq!(
                std::fs::read(&got).unwrap(),
                std::fs::read(dir.join("upper.ext4")).unwrap()
            );
            let m = std::fs::metadata(&got).unwrap();
            assert!(
                m.blocks() * 512 < 1 << 20,
                "holes kept: {}",
                m.blocks() * 512
            );
        }

        let before = (reg.tree(), reg.dump());
        let again: ImportReport = reg.json(&["import", &path]);
        assert!(again.imported.is_empty());
        assert_eq!(again.skipped, digests);
        assert_eq!(again.cache_files_skipped, 5);
        assert_eq!((reg.tree(), reg.dump()), before);
        assert!(staging_entries(&reg).is_empty());
        reg.run(&["verify", "--content"]).ok();
    }
}

#[test]
fn large_sparse_upper_stays_small() {
    let reg = Reg::new();
    let src = source(&reg, "big", 1, 9);
    let mut spec = SnapSpec::new(&src.image);
    spec.len = 1 << 30;
    spec.data = vec![(0, vec![1; 4096]), ((1 << 30) - 8192, vec![2; 8192])];
    spec.integrity = None;
    let dir = reg.path("big/huge");
    let d = make_snapshot(&dir, &spec);
    let mut t = Tar::new();
    t.file(
        &format!("{}/manifest.json", d.archive_prefix()),
        &std::fs::read(dir.join("manifest.json")).unwrap(),
    );
    t.sparse(
        &format!("{}/upper.ext4", d.archive_prefix()),
        1 << 30,
        &spec.data,
    );
    let path = write(&reg, "big.tar", &zstd(&t.finish()));
    reg.run(&["import", &path]).ok();
    let m = std::fs::metadata(
        reg.root()
            .join(format!("snapshots/{}/upper.ext4", d.archive_prefix())),
    )
    .unwrap();
    assert_eq!(m.len(), 1 << 30);
    assert!(m.blocks() * 512 <= 64 << 10, "{}", m.blocks() * 512);
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn leading_dot_slash_and_directory_entries_are_accepted() {
    let reg = Reg::new();
    let src = source(&reg, "d", 1, 11);
    let (d, dir) = &src.snaps[0];
    let prefix = d.archive_prefix();
    let mut t = Tar::new();
    t.dir("./");
    t.dir(&format!("./{prefix}/"));
    t.file(
        &format!("./{prefix}/manifest.json"),
        &std::fs::read(dir.join("manifest.json")).unwrap(),
    );
    t.file(
        &format!("./{prefix}/upper.ext4"),
        &std::fs::read(dir.join("upper.ext4")).unwrap(),
    );
    t.dir("cache/");
    for k in CacheKind::ALL {
        t.dir(&format!("cache/{k}/"));
    }
    add_cache(&mut t, &src.cache, &image_files(&src.image));
    let path = write(&reg, "a.tar", &t.finish());
    let r: ImportReport = reg.json(&["import", &path]);
    assert_eq!(r.imported, vec![*d]);
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn two_imports_at_once_sharing_an_image_both_succeed() {
    let reg = Reg::new();
    reg.run(&["gc"]).ok();
    let a = source(&reg, "a", 2, 13);
    let mut b = source(&reg, "b", 2, 13);
    b.cache = a.cache.clone();
    let pa = write(&reg, "a.tar", &zstd(&full_archive(&a, true).finish()));
    let pb = write(&reg, "b.tar", &zstd(&full_archive(&b, false).finish()));
    let spawn = |p: &str| {
        reg.command(&["import", p, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (spawn(&pa), spawn(&pb));
    let (oa, ob) = (
        ca.wait_with_output().unwrap(),
        cb.wait_with_output().unwrap(),
    );
    assert!(
        oa.status.success(),
        "{}",
        String::from_utf8_lossy(&oa.stderr)
    );
    assert!(
        ob.status.success(),
        "{}",
        String::from_utf8_lossy(&ob.stderr)
    );
    let ra: ImportReport = serde_json::from_slice(&oa.stdout).unwrap();
    let rb: ImportReport = serde_json::from_slice(&ob.stdout).unwrap();
    assert_eq!(ra.cache_files_installed + rb.cache_files_installed, 5);
    assert_eq!(ra.cache_files_skipped + rb.cache_files_skipped, 5);
    assert_eq!(list(&reg).len(), 4);
    assert_consistent(&reg);
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn the_same_archive_imported_twice_at_once() {
    let reg = Reg::new();
    reg.run(&["gc"]).ok();
    let src = source(&reg, "t", 2, 43);
    let path = write(&reg, "t.tar", &zstd(&full_archive(&src, false).finish()));
    let children: Vec<_> = (0..2)
        .map(|_| {
            reg.command(&["import", &path, "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut imported = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: ImportReport = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r.imported.len() + r.skipped.len(), 2);
        imported += r.imported.len();
    }
    assert_eq!(imported, 2, "each snapshot installed exactly once");
    assert_consistent(&reg);
    reg.run(&["verify", "--content"]).ok();
}

/// Every directory under snapshots/ and every file under cache/ has its
/// row, and every row its file.
fn assert_consistent(reg: &Reg) {
    let names: BTreeSet<String> = list(reg).into_iter().map(|e| e.name).collect();
    let dirs: BTreeSet<String> = std::fs::read_dir(reg.root().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, names, "snapshot directories vs rows");
    let rows: Vec<serde_json::Value> = reg.json(&["sql", "SELECT path FROM cache_files"]);
    let rows: BTreeSet<String> = rows
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    let mut files = BTreeSet::new();
    for k in CacheKind::ALL {
        if let Ok(d) = std::fs::read_dir(reg.root().join("cache").join(k.as_str())) {
            for e in d {
                files.insert(format!("{k}/{}", e.unwrap().file_name().to_string_lossy()));
            }
        }
    }
    assert_eq!(files, rows, "cache files vs rows");
}

/// Archives written by GNU tar itself: old-GNU sparse headers with extension
/// blocks for several uppers in one stream, and pax headers on dense members.
#[test]
fn gnu_tar_sparse_and_pax_archives_import() {
    if Command::new("tar").arg("--version").output().is_err() {
        eprintln!("skipping: GNU tar is not installed");
        return;
    }
    for format in [&["--format=gnu", "-S"][..], &["--format=pax"][..]] {
        let reg = Reg::new();
        let src = scattered_chain(&reg, 3);
        let mut files = Vec::new();
        for (d, dir) in &src.snaps {
            let prefix = d.archive_prefix();
            let staged = reg.path(&format!("tree/{prefix}"));
            std::fs::create_dir_all(&staged).unwrap();
            for f in ["manifest.json", "upper.ext4"] {
                // cp --sparse keeps the holes GNU tar's -S looks for.
                let ok = Command::new("cp")
                    .arg("--sparse=always")
                    .arg(dir.join(f))
                    .arg(staged.join(f))
                    .status()
                    .unwrap();
                assert!(ok.success());
                files.push(format!("{prefix}/{f}"));
            }
        }
        let archive = reg.path("gnu.tar");
        let ok = Command::new("tar")
            .args(format)
            .arg("-C")
            .arg(reg.path("tree"))
            .arg("-cf")
            .arg(&archive)
            .args(&files)
            .status()
            .unwrap();
        assert!(ok.success());
        let bytes = std::fs::read(&archive).unwrap();
        let sparse_headers = bytes
            .chunks(512)
            .filter(|h| h[156] == b'S' && &h[257..263] == b"ustar ")
            .count();
        if format[0] == "--format=gnu" {
            assert_eq!(sparse_headers, 3, "GNU tar wrote sparse entries");
        }
        let r: ImportReport = reg.json(&["import", archive.to_str().unwrap()]);
        assert_eq!(r.imported.len(), 3, "{format:?}");
        for (d, dir) in &src.snaps {
            let got = reg
                .root()
                .join(format!("snapshots/{}/upper.ext4", d.archive_prefix()));
            assert_eq!(
                std::fs::read(&got).unwrap(),
                std::fs::read(dir.join("upper.ext4")).unwrap()
            );
        }
        reg.run(&["verify", "--content"]).ok();
    }
}

/// A chain whose uppers hold many separate data extents, so sparse
/// headers need extension blocks.
fn scattered_chain(reg: &Reg, n: usize) -> Source {
    let cache = reg.path("s-cache");
    let image = make_image_cache(&cache, "python:3.12", 41, &[8192]);
    let mut snaps: Vec<(Digest, PathBuf)> = Vec::new();
    for i in 0..n {
        let mut spec = SnapSpec::new(&image);
        spec.created_at = format!("2026-10-01T10:{i:02}:00Z");
        spec.data = (0..40u64)
            .map(|k| (k * 200 * 1024, vec![(k as u8) ^ (i as u8) | 1; 4096]))
            .collect();
        if let Some((p, _)) = snaps.last() {
            spec = spec.parent(*p);
        }
        let dir = reg.path(&format!("s/s{i}"));
        snaps.push((make_snapshot(&dir, &spec), dir));
    }
    Source {
        snaps,
        image,
        cache,
    }
}

/// zstd is told apart by its frame grammar, not its first four bytes: what
/// `pzstd` writes (a skippable frame before each zstd frame) imports, and so
/// does a zstd stream behind a crafted skippable frame of another magic.
#[test]
fn zstd_streams_starting_with_skippable_frames_import() {
    let reg = Reg::new();
    let src = source(&reg, "c", 3, 5);
    let tar = write(&reg, "a.tar", &full_archive(&src, true).finish());
    let pzstd = Command::new("pzstd")
        .args(["-q", "-f", "-p", "2", &tar, "-o"])
        .arg(reg.path("a.tar.pzst"))
        .status()
        .expect("pzstd (scripts/test-deps.sh installs zstd)");
    assert!(pzstd.success());
    let parallel = std::fs::read(reg.path("a.tar.pzst")).unwrap();
    assert_eq!(
        &parallel[..4],
        &0x184D_2A50u32.to_le_bytes(),
        "pzstd starts with a skippable frame"
    );
    let mut skippable = 0x184D_2A5Fu32.to_le_bytes().to_vec();
    skippable.extend(7u32.to_le_bytes());
    skippable.extend(b"payload");
    skippable.extend(zstd(&std::fs::read(&tar).unwrap()));
    let digests: Vec<Digest> = src.snaps.iter().map(|(d, _)| *d).collect();
    for (label, bytes) in [("pzstd", parallel), ("skippable", skippable)] {
        let reg = Reg::new();
        let path = write(&reg, &format!("{label}.tar.zst"), &bytes);
        let r: ImportReport = reg.json(&["import", &path]);
        assert_eq!(r.imported, digests, "{label}");
        reg.run(&["verify", "--content"]).ok();
    }
}
