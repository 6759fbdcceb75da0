//! `import` through the real binary: interop with microsandbox's archives,
//! idempotence, stdin, concurrency, one test per hostile class (refused with
//! the right exit code and message, registry and staging unchanged). Crashes
//! at every journal step are in `crash.rs`.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use msb_registry::digest::Digest;
use msb_registry::image::{CacheFile, CacheKind, ImageMetadata};
use serde::Deserialize;

use crate::tarcraft::{Flavour, Tar, header, zstd};
use crate::util::*;

#[derive(Debug, Deserialize)]
struct ImportReport {
    head: Digest,
    name: String,
    imported: Vec<Digest>,
    skipped: Vec<Digest>,
    cache_files_installed: usize,
    cache_files_skipped: usize,
}

#[derive(Debug, Deserialize)]
struct ListEntry {
    digest: Digest,
    name: String,
    parent: Option<Digest>,
}

/// Snapshot directories and an image cache to build archives from.
struct Source {
    /// (digest, directory), root first.
    snaps: Vec<(Digest, PathBuf)>,
    image: ImageMetadata,
    cache: PathBuf,
}

/// A chain of `n` snapshots on one image, built under `reg`'s scratch area in `tag`.
fn source(reg: &Reg, tag: &str, n: usize, seed: u8) -> Source {
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
fn add_snapshot(t: &mut Tar, digest: &Digest, dir: &Path, sparse: bool) {
    let prefix = digest.archive_prefix();
    t.file(
        &format!("{prefix}/manifest.json"),
        &std::fs::read(dir.join("manifest.json")).unwrap(),
    );
    let upper = std::fs::read(dir.join("upper.ext4")).unwrap();
    let path = format!("{prefix}/upper.ext4");
    if sparse {
        let extents: Vec<(u64, Vec<u8>)> = upper
            .chunks(4096)
            .enumerate()
            .filter(|(_, c)| c.iter().any(|&b| b != 0))
            .map(|(i, c)| ((i * 4096) as u64, c.to_vec()))
            .collect();
        t.sparse(&path, upper.len() as u64, &extents);
    } else {
        t.file(&path, &upper);
    }
}

/// Every cache file of `image` in `cache`, metadata first.
fn image_files(image: &ImageMetadata) -> Vec<CacheFile> {
    let mut files = vec![CacheFile::metadata_for_ref("python:3.12")];
    files.extend(image.artifact_files());
    files
}

fn add_cache(t: &mut Tar, cache: &Path, files: &[CacheFile]) {
    for f in files {
        t.file(
            &format!("cache/{}", f.rel_path()),
            &std::fs::read(cache.join(f.rel_path())).unwrap(),
        );
    }
}

/// The whole chain with its image cache, as export --with-parents --with-image writes it.
fn full_archive(src: &Source, sparse: bool) -> Tar {
    let mut t = Tar::new();
    for (d, dir) in &src.snaps {
        add_snapshot(&mut t, d, dir, sparse);
    }
    add_cache(&mut t, &src.cache, &image_files(&src.image));
    t
}

fn write(reg: &Reg, name: &str, bytes: &[u8]) -> String {
    let p = reg.path(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

fn staging_entries(reg: &Reg) -> Vec<String> {
    std::fs::read_dir(reg.root().join("staging"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A registry that already holds one imported snapshot, so "unchanged" means something.
fn populated() -> Reg {
    let reg = Reg::new();
    let src = source(&reg, "base", 1, 3);
    let path = write(&reg, "base.tar", &full_archive(&src, false).finish());
    reg.run(&["import", &path]).ok();
    reg
}

/// Import `bytes` and assert it is refused with `code` and `text`, leaving
/// the registry and staging exactly as they were.
#[track_caller]
fn refused(reg: &Reg, bytes: &[u8], code: i32, text: &str) {
    let before = (reg.tree(), reg.dump());
    let path = write(reg, "hostile.tar", bytes);
    reg.run(&["import", &path]).fails(code, text);
    assert_eq!((reg.tree(), reg.dump()), before, "registry changed");
    assert_eq!(
        staging_entries(reg),
        Vec::<String>::new(),
        "staging left behind"
    );
    let live: Vec<serde_json::Value> = reg.json(&[
        "sql",
        "SELECT id FROM imports WHERE state NOT IN ('done', 'failed')",
    ]);
    assert!(live.is_empty(), "an import was left open: {live:?}");
}

fn list(reg: &Reg) -> Vec<ListEntry> {
    reg.json(&["list"])
}

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
}

#[test]
fn stdin_import_and_named_head() {
    let reg = Reg::new();
    let src = source(&reg, "in", 3, 1);
    let bytes = zstd(&full_archive(&src, true).finish());
    let mut child = Command::new(bin())
        .args([
            "--root",
            reg.root().to_str().unwrap(),
            "import",
            "-",
            "--name",
            "app",
            "--json",
        ])
        .env_remove("MSB_FAILPOINT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let r: ImportReport = serde_json::from_slice(&out.stdout).unwrap();
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
    let mut child = Command::new(bin())
        .args(["--root", reg.root().to_str().unwrap(), "import", "-"])
        .env_remove("MSB_FAILPOINT")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&bytes[..bytes.len() / 2])
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(6));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("error: rejected archive: stdin: corrupt or truncated zstd stream"),
        "{stderr}"
    );
    assert_eq!((reg.tree(), reg.dump()), before, "registry changed");
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
        Command::new(bin())
            .args([
                "--root",
                reg.root().to_str().unwrap(),
                "import",
                p,
                "--json",
            ])
            .env_remove("MSB_FAILPOINT")
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
}

#[test]
fn the_same_archive_imported_twice_at_once() {
    let reg = Reg::new();
    reg.run(&["gc"]).ok();
    let src = source(&reg, "t", 2, 43);
    let path = write(&reg, "t.tar", &zstd(&full_archive(&src, false).finish()));
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(bin())
                .args([
                    "--root",
                    reg.root().to_str().unwrap(),
                    "import",
                    &path,
                    "--json",
                ])
                .env_remove("MSB_FAILPOINT")
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

// ------------------------------------------------------- hostile input

fn one_snapshot(reg: &Reg, tag: &str) -> (Digest, PathBuf, Source) {
    let src = source(reg, tag, 1, 21);
    let (d, dir) = src.snaps[0].clone();
    (d, dir, src)
}

fn manifest_of(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("manifest.json")).unwrap()
}

fn upper_of(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("upper.ext4")).unwrap()
}

#[test]
fn refuses_absolute_paths() {
    let reg = populated();
    let mut t = Tar::new();
    t.file("/etc/passwd", b"x");
    refused(
        &reg,
        &t.finish(),
        6,
        "/etc/passwd: absolute paths are not allowed",
    );
}

#[test]
fn refuses_dotdot_in_plain_paths_pax_records_and_gnu_long_names() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let prefix = d.archive_prefix();
    let mut t = Tar::new();
    t.file(&format!("{prefix}/../evil"), b"x");
    refused(&reg, &t.finish(), 6, "'..' components are not allowed");

    let mut t = Tar::new();
    t.pax(&[("path", b"../x")]);
    t.file(&format!("{prefix}/manifest.json"), &manifest_of(&dir));
    refused(
        &reg,
        &t.finish(),
        6,
        "../x: '..' components are not allowed",
    );

    let long = format!("{prefix}/{}/../../../../etc/cron.d/x", "a".repeat(120));
    let mut t = Tar::new();
    t.entry(b'0', long.as_bytes(), b"x", b"");
    refused(&reg, &t.finish(), 6, "'..' components are not allowed");
}

#[test]
fn refuses_non_utf8_names() {
    let reg = populated();
    let mut t = Tar::new();
    t.entry(b'0', b"sha256-0123456789abcdef/\xff\xfe", b"x", b"");
    refused(&reg, &t.finish(), 6, "path is not UTF-8");
}

#[test]
fn refuses_links_devices_fifos_and_unknown_types() {
    let reg = populated();
    for (flag, text) in [
        (b'2', "symbolic links are not allowed"),
        (b'1', "hard links are not allowed"),
        (b'3', "character devices are not allowed"),
        (b'4', "block devices are not allowed"),
        (b'6', "FIFOs are not allowed"),
        (b'7', "entry type '7' is not allowed"),
        (b'Z', "entry type 'Z' is not allowed"),
    ] {
        let mut t = Tar::new();
        t.entry(
            flag,
            b"sha256-0123456789abcdef/upper.ext4",
            b"",
            b"/etc/shadow",
        );
        refused(&reg, &t.finish(), 6, text);
    }
}

#[test]
fn refuses_pax_global_headers() {
    let reg = populated();
    let mut t = Tar::new();
    t.global_pax(&[("path", b"sha256-0123456789abcdef/manifest.json")]);
    refused(&reg, &t.finish(), 6, "pax global headers are not allowed");
}

#[test]
fn refuses_paths_outside_the_grammar() {
    let reg = populated();
    for (path, text) in [
        ("upper.ext4", "files at the top level are not allowed"),
        ("sha256-0123456789abcdef/a/b", "nesting is not allowed"),
        ("etc/passwd", "members live under"),
        ("SHA256-0123456789abcdef/x", "members live under"),
    ] {
        let mut t = Tar::new();
        t.file(path, b"x");
        refused(&reg, &t.finish(), 6, text);
    }
    let mut t = Tar::new();
    t.dir("sha256-0123456789abcdef/sub/");
    refused(
        &reg,
        &t.finish(),
        6,
        "directories are allowed only at depth 1",
    );
}

#[test]
fn refuses_cache_members_of_unknown_kind_or_wrong_extension() {
    let reg = populated();
    let hex = Digest::of(b"x").hex();
    for (path, text) in [
        (
            format!("cache/blobs/sha256_{hex}.erofs"),
            "unknown cache kind \"blobs\"",
        ),
        (
            format!("cache/layers/sha256_{hex}.vmdk"),
            "is not valid in cache/layers/",
        ),
        (
            format!("cache/vmdk/sha256_{hex}.erofs"),
            "is not valid in cache/vmdk/",
        ),
        (
            format!("cache/manifests/{hex}.txt"),
            "is not valid in cache/manifests/",
        ),
    ] {
        let mut t = Tar::new();
        t.file(&path, b"x");
        refused(&reg, &t.finish(), 6, text);
    }
}

#[test]
fn refuses_duplicate_members() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    t.file(
        &format!("./{}/upper.ext4", d.archive_prefix()),
        &upper_of(&dir),
    );
    refused(&reg, &t.finish(), 6, "duplicate member");
}

#[test]
fn refuses_bad_header_checksums() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    let mut bytes = t.finish();
    bytes[10] ^= 0x20;
    refused(&reg, &bytes, 6, "checksum mismatch");
}

/// Found by the `archive` fuzz target: a member name starting with a
/// newline came back verbatim in the tar reader's message, so the error
/// took two lines and an archive could forge stderr output.
#[test]
fn regression_fuzz_control_characters_in_names_stay_on_one_line() {
    let reg = populated();
    let prefix = "sha256-0123456789abcdef";
    let mut h = header(
        Flavour::Gnu,
        b'0',
        format!("\n{prefix}/manifest.json").as_bytes(),
        2,
        b"",
    );
    h[148..156].copy_from_slice(b"\x01\x1b[2J\r\n ");
    let mut bytes = h.to_vec();
    bytes.extend_from_slice(b"{}");
    bytes.resize(2 * 512, 0);
    bytes.extend([0u8; 1024]);
    refused(
        &reg,
        &bytes,
        6,
        "corrupt tar stream: checksum field is not an octal or base-256 number",
    );

    let mut t = Tar::new();
    t.file(&format!("{prefix}/up\nper\x1b[2J"), b"x");
    refused(&reg, &t.finish(), 6, "up\\nper\\u{1b}[2J");
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn refuses_extension_headers_that_desynchronise_entries() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let prefix = d.archive_prefix();
    // A pax size record that lies: the file's data is then read as headers.
    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &manifest_of(&dir));
    t.pax(&[("size", b"512")]);
    let vmdk = CacheFile {
        kind: CacheKind::Vmdk,
        key: d,
    };
    t.file(&format!("cache/{}", vmdk.rel_path()), &[b'x'; 2048]);
    refused(
        &reg,
        &t.finish(),
        6,
        "corrupt tar stream: checksum field is not an octal or base-256 number after member cache/vmdk/",
    );

    // A GNU long name that is never followed by a member.
    let mut t = Tar::new();
    t.long_name(format!("{prefix}/manifest.json").as_bytes());
    refused(&reg, &t.finish(), 6, "corrupt tar stream");

    // Two pax headers for one member.
    let mut t = Tar::new();
    t.pax(&[("path", format!("{prefix}/manifest.json").as_bytes())]);
    t.pax(&[("path", b"x")]);
    t.file("y", b"");
    refused(&reg, &t.finish(), 6, "corrupt tar stream");

    // An oversized GNU long name: refused before it is buffered.
    let mut t = Tar::new();
    t.long_name(&vec![b'a'; 3 << 20]);
    t.file("x", b"");
    refused(&reg, &t.finish(), 6, "exceed");

    // pax GNU.sparse records (formats 0.x/1.0) are not part of the format.
    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &manifest_of(&dir));
    t.pax(&[
        ("GNU.sparse.size", b"8388608"),
        ("GNU.sparse.map", b"0,4096"),
    ]);
    t.file(&format!("{prefix}/upper.ext4"), &[1u8; 4096]);
    refused(
        &reg,
        &t.finish(),
        6,
        "pax GNU.sparse records are not supported",
    );
}

#[test]
fn refuses_truncated_streams_and_random_bytes() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    let whole = t.finish();

    refused(&reg, &whole[..whole.len() / 2], 6, "truncated");
    refused(&reg, &t.bytes, 6, "no end-of-archive marker");
    refused(&reg, &whole[..700], 6, "truncated");
    refused(&reg, b"", 6, "it is empty");

    let mut noise = Vec::new();
    let mut x: u32 = 0x1234_5678;
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    refused(&reg, &noise, 6, "corrupt tar stream");
}

#[test]
fn refuses_corrupt_and_truncated_zstd() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    let z = zstd(&t.finish());
    refused(&reg, &z[..z.len() / 2], 6, "zstd stream");
    let mut bad = z.clone();
    for i in (20..bad.len() - 20).step_by(97) {
        bad[i] ^= 0x5a;
    }
    refused(&reg, &bad, 6, "rejected archive");
    let mut garbage = crate::tarcraft::zstd(b"").to_vec();
    garbage.truncate(4);
    garbage.extend([0xffu8; 64]);
    refused(&reg, &garbage, 6, "zstd stream");
}

#[test]
fn refuses_a_zstd_window_over_the_limit_naming_the_limit() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    // A 128 MiB window, as `zstd --long=27` reading a pipe declares.
    let long = crate::tarcraft::zstd_with(
        &t.finish(),
        &[async_compression::zstd::CParameter::window_log(27)],
    );
    refused(
        &reg,
        &long,
        6,
        "/hostile.tar: zstd frame needs a window larger than 32 MiB (compressed with --long?)",
    );
}

#[test]
fn refuses_an_archive_without_a_manifest() {
    let reg = populated();
    let src = source(&reg, "h", 1, 21);
    let mut t = Tar::new();
    add_cache(&mut t, &src.cache, &image_files(&src.image));
    refused(&reg, &t.finish(), 6, "no snapshot manifest found");
    refused(&reg, &Tar::new().finish(), 6, "no snapshot manifest found");
}

#[test]
fn refuses_files_before_their_manifest() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let prefix = d.archive_prefix();
    let mut t = Tar::new();
    t.file(&format!("{prefix}/upper.ext4"), &upper_of(&dir));
    t.file(&format!("{prefix}/manifest.json"), &manifest_of(&dir));
    refused(
        &reg,
        &t.finish(),
        6,
        "the manifest must be the first member",
    );
}

/// The manifest of `dir` with `edit` applied, under the prefix of its new digest.
fn edited_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> (String, Vec<u8>) {
    let mut v: serde_json::Value = serde_json::from_slice(&manifest_of(dir)).unwrap();
    edit(&mut v);
    let bytes = serde_json::to_vec(&v).unwrap();
    (format!("sha256-{}", &Digest::of(&bytes).hex()[..16]), bytes)
}

#[test]
fn refuses_manifests_that_break_the_schema() {
    let reg = populated();
    let (_, dir, _) = one_snapshot(&reg, "h");
    for (edit, text) in [
        (
            Box::new(|v: &mut serde_json::Value| v["extra"] = 1.into())
                as Box<dyn Fn(&mut serde_json::Value)>,
            "unknown field `extra`",
        ),
        (
            Box::new(|v: &mut serde_json::Value| {
                v.as_object_mut().unwrap().remove("parent");
            }),
            "missing field `parent`",
        ),
        (Box::new(|v| v["schema"] = 2.into()), "unsupported schema 2"),
        (
            Box::new(|v| v["image"]["manifest_digest"] = "sha256:abc".into()),
            "malformed digest",
        ),
        (
            Box::new(|v| v["upper"]["file"] = "../upper.ext4".into()),
            "is not a single normal file name",
        ),
    ] {
        let (prefix, bytes) = edited_manifest(&dir, edit);
        let mut t = Tar::new();
        t.file(&format!("{prefix}/manifest.json"), &bytes);
        t.file(&format!("{prefix}/upper.ext4"), &upper_of(&dir));
        refused(&reg, &t.finish(), 5, text);
    }
    let mut t = Tar::new();
    t.file("sha256-0123456789abcdef/manifest.json", b"{");
    let run = {
        let path = write(&reg, "eof.tar", &t.finish());
        reg.run(&["import", &path]).fails(5, "EOF while parsing")
    };
    assert_eq!(
        run.stderr.matches("EOF while parsing").count(),
        1,
        "cause printed once"
    );
    let mut t = Tar::new();
    t.file(
        "sha256-0123456789abcdef/manifest.json",
        &vec![b' '; (1 << 20) + 1],
    );
    refused(&reg, &t.finish(), 6, "the limit is 1 MiB");
}

#[test]
fn refuses_oversized_metadata_before_buffering_it() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    let meta = CacheFile::metadata_for_ref("python:3.12");
    let h = header(
        Flavour::Gnu,
        b'0',
        format!("cache/{}", meta.rel_path()).as_bytes(),
        (16 << 20) + 1,
        b"",
    );
    // The header alone: the size is refused before any data is read.
    t.raw(h, &[]);
    refused(&reg, &t.bytes, 6, "the limit is 16 MiB");
}

#[test]
fn refuses_a_manifest_under_the_wrong_prefix() {
    let reg = populated();
    let (_, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    t.file("sha256-0123456789abcdef/manifest.json", &manifest_of(&dir));
    refused(&reg, &t.finish(), 5, "so its directory must be sha256-");
}

#[test]
fn refuses_upper_size_and_integrity_mismatches() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let prefix = d.archive_prefix();
    let upper = upper_of(&dir);

    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &manifest_of(&dir));
    t.file(&format!("{prefix}/upper.ext4"), &upper[..upper.len() / 2]);
    refused(
        &reg,
        &t.finish(),
        5,
        "size is 4194304 bytes, manifest records 8388608",
    );

    let mut flipped = upper.clone();
    flipped[5] ^= 1;
    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &manifest_of(&dir));
    t.file(&format!("{prefix}/upper.ext4"), &flipped);
    refused(&reg, &t.finish(), 5, "msb-sparse-sha256-v1 integrity is");

    let (prefix, bytes) = edited_manifest(&dir, |v| {
        v["upper"]["integrity"]["algorithm"] = "md5".into();
    });
    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &bytes);
    t.file(&format!("{prefix}/upper.ext4"), &upper);
    refused(
        &reg,
        &t.finish(),
        5,
        "unsupported integrity algorithm \"md5\"",
    );
}

#[test]
fn refuses_a_missing_upper() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    t.file(
        &format!("{}/manifest.json", d.archive_prefix()),
        &manifest_of(&dir),
    );
    refused(
        &reg,
        &t.finish(),
        5,
        "upper file named by the manifest is missing",
    );
}

#[test]
fn refuses_metadata_whose_digests_do_not_match() {
    let reg = populated();
    let (d, dir, src) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    let meta_file = CacheFile::metadata_for_ref("python:3.12");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.cache.join(meta_file.rel_path())).unwrap())
            .unwrap();
    meta["raw_config_json"] = "{}".into();
    t.file(
        &format!("cache/{}", meta_file.rel_path()),
        &serde_json::to_vec(&meta).unwrap(),
    );
    add_cache(&mut t, &src.cache, &src.image.artifact_files());
    refused(&reg, &t.finish(), 5, "raw_config_json hashes to");
}

#[test]
fn refuses_metadata_pinning_another_image() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let other_cache = reg.path("other-cache");
    let other = make_image_cache(&other_cache, "python:3.12", 99, &[8192]);
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    add_cache(&mut t, &other_cache, &image_files(&other));
    refused(&reg, &t.finish(), 5, "metadata describes image");
}

#[test]
fn refuses_missing_and_extra_cache_files() {
    let reg = populated();
    let (d, dir, src) = one_snapshot(&reg, "h");
    let files = image_files(&src.image);

    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    add_cache(&mut t, &src.cache, &files[..files.len() - 1]);
    refused(&reg, &t.finish(), 5, "missing from the archive");

    let extra = CacheFile {
        kind: CacheKind::Layers,
        key: Digest::of(b"stray"),
    };
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    add_cache(&mut t, &src.cache, &files);
    t.file(&format!("cache/{}", extra.rel_path()), &[7u8; 4096]);
    refused(&reg, &t.finish(), 5, "not needed by any image metadata");

    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    add_cache(&mut t, &src.cache, &files[1..]);
    refused(&reg, &t.finish(), 5, "not needed by any image metadata");
}

#[test]
fn refuses_misaligned_erofs() {
    let reg = populated();
    let cache = reg.path("odd-cache");
    let image = make_image_cache(&cache, "python:3.12", 23, &[5000]);
    let spec = SnapSpec::new(&image);
    let dir = reg.path("odd/s");
    let d = make_snapshot(&dir, &spec);
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    add_cache(&mut t, &cache, &image_files(&image));
    refused(
        &reg,
        &t.finish(),
        5,
        "EROFS image of 5000 bytes is not a non-empty multiple of 4096",
    );
}

#[test]
fn refuses_a_cache_file_that_would_replace_an_installed_one() {
    let reg = Reg::new();
    let src = source(&reg, "a", 1, 29);
    let path = write(&reg, "a.tar", &full_archive(&src, false).finish());
    reg.run(&["import", &path]).ok();

    let mut spec = SnapSpec::new(&src.image).label("other", "yes");
    spec.integrity = None;
    let dir = reg.path("b/s");
    let d = make_snapshot(&dir, &spec);
    let vmdk = CacheFile {
        kind: CacheKind::Vmdk,
        key: src.image.manifest_digest,
    };
    std::fs::write(
        src.cache.join(vmdk.rel_path()),
        b"# Disk DescriptorFile tampered\n",
    )
    .unwrap();
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    add_cache(&mut t, &src.cache, &image_files(&src.image));
    refused(&reg, &t.finish(), 4, "conflict: cache/vmdk/");
}

#[test]
fn refuses_a_head_name_already_taken() {
    let reg = populated();
    let taken = list(&reg)[0].name.clone();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    let before = (reg.tree(), reg.dump());
    let path = write(&reg, "n.tar", &t.finish());
    reg.run(&["import", &path, "--name", &taken])
        .fails(4, "conflict: snapshot name");
    assert_eq!((reg.tree(), reg.dump()), before);
    assert!(staging_entries(&reg).is_empty());
}

#[test]
fn refuses_children_before_parents() {
    let reg = populated();
    let src = source(&reg, "o", 2, 31);
    let mut t = Tar::new();
    for (d, dir) in src.snaps.iter().rev() {
        add_snapshot(&mut t, d, dir, false);
    }
    refused(&reg, &t.finish(), 6, "parents must come first");
}

#[test]
fn refuses_a_directory_entry_with_data() {
    let reg = populated();
    let mut t = Tar::new();
    let h = header(Flavour::Gnu, b'5', b"cache/", 512, b"");
    t.raw(h, &[0u8; 512]);
    refused(&reg, &t.finish(), 6, "a directory entry may not carry data");
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
