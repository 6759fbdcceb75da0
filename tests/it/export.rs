//! Export through the binary: member layout and GNU tar round trips,
//! determinism, sparse and dense entries, verification on the way out,
//! chains, bases, image artifacts, atomic output and stdout streaming.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use msb_registry::model::digest::Digest;
use msb_registry::model::image::{CacheFile, CacheKind, ImageMetadata};

use crate::reports::ExportReport;
use crate::util::*;

/// One member as its header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    name: String,
    kind: u8,
    /// Bytes stored in the archive (data extents only for sparse members).
    stored: u64,
    mode: u64,
    uid: u64,
    gid: u64,
    owner_names: String,
    mtime: u64,
    /// Sparse-map extension blocks after the header.
    extensions: usize,
}

fn octal(field: &[u8]) -> u64 {
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| b as char)
        .collect();
    u64::from_str_radix(text.trim(), 8).unwrap_or_else(|_| panic!("octal field {field:?}"))
}

/// Parse a plain tar stream's headers, checking it ends in exactly two zero blocks.
fn members(tar: &[u8]) -> Vec<Member> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let h = &tar[pos..pos + 512];
        if h.iter().all(|&b| b == 0) {
            assert_eq!(
                tar.len(),
                pos + 1024,
                "exactly two zero blocks end the archive"
            );
            assert!(tar[pos..].iter().all(|&b| b == 0));
            return out;
        }
        let name_len = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let mut m = Member {
            name: String::from_utf8(h[..name_len].to_vec()).unwrap(),
            kind: h[156],
            stored: octal(&h[124..136]),
            mode: octal(&h[100..108]),
            uid: octal(&h[108..116]),
            gid: octal(&h[116..124]),
            owner_names: String::from_utf8_lossy(&h[265..329])
                .trim_matches('\0')
                .to_string(),
            mtime: octal(&h[136..148]),
            extensions: 0,
        };
        pos += 512;
        if m.kind == b'x' {
            // The pax header carrying a snapshot's name: it precedes that
            // snapshot's manifest and is no member of its own.
            let (dir, file) = m.name.split_once("/PaxHeaders/").unwrap();
            assert_eq!(file, "manifest.json", "{}", m.name);
            let next = &tar[pos + (m.stored as usize).div_ceil(512) * 512..][..100];
            assert!(next.starts_with(format!("{dir}/manifest.json\0").as_bytes()));
            let record = String::from_utf8_lossy(&tar[pos..pos + m.stored as usize]);
            assert!(record.contains(" comment=msb-registry.name="), "{record}");
            pos += (m.stored as usize).div_ceil(512) * 512;
            continue;
        }
        if m.kind == b'S' && h[482] == 1 {
            loop {
                let ext = &tar[pos..pos + 512];
                pos += 512;
                m.extensions += 1;
                if ext[504] != 1 {
                    break;
                }
            }
        }
        pos += (m.stored as usize).div_ceil(512) * 512;
        out.push(m);
    }
}

fn unzstd(bytes: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut dec = async_compression::tokio::bufread::ZstdDecoder::new(bytes);
        let mut out = Vec::new();
        dec.read_to_end(&mut out).await.unwrap();
        out
    })
}

fn tar_cmd(args: &[&str], dir: Option<&Path>) -> String {
    let mut cmd = Command::new("tar");
    cmd.args(args);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn export(reg: &Reg, args: &[&str]) -> (ExportReport, Vec<u8>) {
    let out = reg.path(&format!(
        "out-{}.tar",
        args.join("_").replace(['/', '-'], "")
    ));
    let mut a = vec!["export"];
    a.extend_from_slice(args);
    a.extend(["-o", out.to_str().unwrap()]);
    let report: ExportReport = reg.json(&a);
    assert_eq!(report.archive, out.to_str().unwrap());
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(report.bytes, bytes.len() as u64);
    (report, bytes)
}

fn image_members(image: &ImageMetadata) -> Vec<String> {
    let mut files = vec![CacheFile::metadata_for_ref("python:3.12")];
    files.extend(image.artifact_files());
    files
        .iter()
        .map(|f| format!("cache/{}", f.rel_path()))
        .collect()
}

fn snapshot_members(digests: &[Digest]) -> Vec<String> {
    digests
        .iter()
        .flat_map(|d| {
            let p = d.archive_prefix();
            [format!("{p}/manifest.json"), format!("{p}/upper.ext4")]
        })
        .collect()
}

fn upper(reg: &Reg, name: &str) -> PathBuf {
    reg.root().join("snapshots").join(name).join("upper.ext4")
}

/// Files in `dir`, to show nothing (no temporary file) was left behind.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn chain_with_image_round_trips_through_gnu_tar() {
    let reg = Reg::new();
    let (d, image) = chain_in_registry(&reg);
    let (report, tar) = export(
        &reg,
        &["app", "--with-parents", "--with-image", "--plain-tar"],
    );
    assert_eq!(report.snapshots, d);
    assert_eq!(report.head, d[2]);
    let expected_cache: Vec<String> = image_members(&image);
    assert_eq!(
        report.cache_files,
        expected_cache
            .iter()
            .map(|m| m.strip_prefix("cache/").unwrap().to_string())
            .collect::<Vec<_>>()
    );

    let mut expected = snapshot_members(&d);
    expected.extend(expected_cache);
    let listed = members(&tar);
    let names: Vec<&str> = listed.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, expected, "parents first, manifest first, cache last");
    for (i, m) in listed.iter().enumerate() {
        assert_eq!((m.mode, m.uid, m.gid), (0o100644, 0, 0), "{}", m.name);
        assert_eq!(m.owner_names, "", "{}", m.name);
        let minute = if i < 6 { i as u64 / 2 } else { 2 };
        assert_eq!(
            m.mtime,
            1_790_845_200 + 60 * minute,
            "{}: created_at",
            m.name
        );
        let sparse = m.name.ends_with("upper.ext4");
        assert_eq!(m.kind, if sparse { b'S' } else { b'0' }, "{}", m.name);
    }

    let archive = reg.path("a.tar");
    std::fs::write(&archive, &tar).unwrap();
    let verbose = tar_cmd(&["-tvf", archive.to_str().unwrap()], None);
    assert_eq!(verbose.lines().count(), expected.len());
    assert!(
        verbose.lines().all(|l| l.starts_with("-rw-r--r-- 0/0")),
        "{verbose}"
    );
    let x = reg.path("x");
    std::fs::create_dir_all(&x).unwrap();
    tar_cmd(&["-xSf", archive.to_str().unwrap()], Some(&x));
    for (digest, name) in d.iter().zip(["base", "deps", "app"]) {
        let dir = x.join(digest.archive_prefix());
        let got = dir.join("upper.ext4");
        assert_eq!(
            std::fs::read(&got).unwrap(),
            std::fs::read(upper(&reg, name)).unwrap(),
            "{name}: identical bytes"
        );
        let meta = std::fs::metadata(&got).unwrap();
        assert_eq!(meta.len(), 8 << 20);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "{name}: holes restored, {} bytes allocated",
            meta.blocks() * 512
        );
        assert_eq!(
            std::fs::read(dir.join("manifest.json")).unwrap(),
            std::fs::read(
                reg.root()
                    .join("snapshots")
                    .join(name)
                    .join("manifest.json")
            )
            .unwrap()
        );
    }
    for m in image_members(&image) {
        let rel = m.strip_prefix("cache/").unwrap();
        assert_eq!(
            std::fs::read(x.join(&m)).unwrap(),
            std::fs::read(reg.root().join("cache").join(rel)).unwrap(),
            "{m}"
        );
    }

    let (_, zst) = export(&reg, &["app", "--with-parents", "--with-image"]);
    assert_eq!(&zst[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd by default");
    assert_eq!(
        unzstd(&zst),
        tar,
        "the zstd archive holds the same tar stream"
    );
}

#[test]
fn exports_are_byte_identical() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let args = ["export", "app", "--with-parents", "--with-image", "-o"];
    let a = reg.path("a.tar.zst");
    let b = reg.path("b.tar.zst");
    reg.run(&[&args[..], &[a.to_str().unwrap()]].concat()).ok();
    reg.run(&[&args[..], &[b.to_str().unwrap()]].concat()).ok();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    let c = reg.path("c.tar.zst");
    reg.run(&[&args[..], &[c.to_str().unwrap(), "--level", "19"]].concat())
        .ok();
    assert_eq!(
        unzstd(&std::fs::read(&c).unwrap()),
        unzstd(&std::fs::read(&a).unwrap()),
        "the level changes only the compression"
    );
}

/// zstd's multithreaded output must not depend on how many cores the
/// exporting machine has: one CPU (taskset) and all CPUs give the same bytes
/// for an archive spanning several compression jobs.
#[test]
fn exports_do_not_depend_on_the_number_of_cores() {
    if Command::new("taskset").arg("-V").output().is_err() {
        eprintln!("skipping: taskset is not installed");
        return;
    }
    let reg = Reg::new();
    let cache = reg.path("cache");
    let image = make_image_cache(&cache, "python:3.12", 3, &[4096]);
    let mut spec = SnapSpec::new(&image);
    spec.len = 64 << 20;
    spec.data = (0..4u64)
        .map(|i| (i << 24, msb_registry::sample::mixed_bytes(i, 4 << 20)))
        .collect();
    let dir = reg.path("big");
    make_snapshot(&dir, &spec);
    reg.run(&["add", dir.to_str().unwrap()]).ok();

    let all = reg.path("all-cores.tar.zst");
    reg.run(&["export", "big", "-o", all.to_str().unwrap()])
        .ok();
    let one = reg.path("one-core.tar.zst");
    let out = Command::new("taskset")
        .args(["-c", "0", bin(), "--root"])
        .arg(reg.root())
        .args(["export", "big", "-o", one.to_str().unwrap()])
        .env_remove("MSB_REGISTRY_ROOT")
        .output()
        .unwrap();
    Run::from(out).ok();
    let (a, b) = (std::fs::read(&all).unwrap(), std::fs::read(&one).unwrap());
    assert!(a.len() > 2 * 1024 * 1024, "spans several zstd jobs");
    assert!(a == b, "one core and all cores wrote different archives");
}

#[test]
fn dense_archives_hold_only_regular_entries() {
    let reg = Reg::new();
    let (d, _) = chain_in_registry(&reg);
    let (_, tar) = export(
        &reg,
        &[
            "app",
            "--with-parents",
            "--with-image",
            "--plain-tar",
            "--dense",
        ],
    );
    let listed = members(&tar);
    assert_eq!(listed.len(), 11);
    for m in &listed {
        assert_eq!(m.kind, b'0', "{}: regular entries only", m.name);
        assert!(!m.name.starts_with("./"), "{}", m.name);
    }
    let uppers: Vec<&Member> = listed
        .iter()
        .filter(|m| m.name.ends_with("upper.ext4"))
        .collect();
    assert!(
        uppers.iter().all(|m| m.stored == 8 << 20),
        "holes written as zeros"
    );

    let archive = reg.path("dense.tar");
    std::fs::write(&archive, &tar).unwrap();
    let x = reg.path("x");
    std::fs::create_dir_all(&x).unwrap();
    tar_cmd(&["-xf", archive.to_str().unwrap()], Some(&x));
    assert_eq!(
        std::fs::read(x.join(d[2].archive_prefix()).join("upper.ext4")).unwrap(),
        std::fs::read(upper(&reg, "app")).unwrap()
    );
}

#[test]
fn long_sparse_maps_use_extension_blocks() {
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("cache"), "python:3.12", 3, &[4096]);
    let mut spec = SnapSpec::new(&image);
    spec.len = 64 << 20;
    spec.data = (0..40u64)
        .map(|i| {
            (
                i * (1 << 20) + 4096 * (i % 7),
                vec![i as u8 + 1; 4096 * (1 + i as usize % 3)],
            )
        })
        .collect();
    let dir = reg.path("frag");
    make_snapshot(&dir, &spec);
    reg.run(&["add", dir.to_str().unwrap()]).ok();

    let (_, tar) = export(&reg, &["frag", "--plain-tar"]);
    let listed = members(&tar);
    assert_eq!(listed[1].kind, b'S');
    assert!(
        listed[1].extensions >= 1,
        "40 extents need extension blocks"
    );
    let data: u64 = spec.data.iter().map(|(_, b)| b.len() as u64).sum();
    assert!(listed[1].stored <= data + 40 * 4096, "only data is stored");
    let archive = reg.path("frag.tar");
    std::fs::write(&archive, &tar).unwrap();
    let x = reg.path("x");
    std::fs::create_dir_all(&x).unwrap();
    tar_cmd(&["-xSf", archive.to_str().unwrap()], Some(&x));
    let got = x.join(listed[1].name.as_str());
    assert_eq!(std::fs::read(&got).unwrap(), logical_bytes(&spec));
    assert!(std::fs::metadata(&got).unwrap().blocks() * 512 < 4 << 20);
}

#[test]
fn corruption_fails_with_exit_5_and_leaves_no_output() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let target = reg.path("out");
    std::fs::create_dir_all(&target).unwrap();
    let archive = target.join("chain.tar.zst");
    std::fs::write(&archive, b"previous archive").unwrap();

    let up = upper(&reg, "deps");
    let f = File::options().read(true).write(true).open(&up).unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, (1 << 20) + 100).unwrap();
    f.write_all_at(&[byte[0] ^ 0x10], (1 << 20) + 100).unwrap();
    drop(f);

    for extra in [&[][..], &["--dense"], &["--plain-tar"]] {
        let mut args = vec![
            "export",
            "app",
            "--with-parents",
            "-o",
            archive.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        reg.run(&args)
            .fails(5, &format!("{}: content digest", up.display()));
        assert_eq!(std::fs::read(&archive).unwrap(), b"previous archive");
        assert_eq!(
            entries(&target),
            ["chain.tar.zst"],
            "no temporary file left"
        );
    }
    reg.run(&["export", "base", "-o", archive.to_str().unwrap()])
        .ok();

    std::fs::OpenOptions::new()
        .write(true)
        .open(&up)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let out = reg.path("short.tar");
    reg.run(&["export", "deps", "-o", out.to_str().unwrap()])
        .fails(5, "size is 4194304 bytes, index records 8388608");
    assert!(!out.exists());
}

/// A registry holding one small snapshot named `one`.
fn registry_with_one() -> Reg {
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("cache"), "python:3.12", 5, &[4096]);
    make_snapshot(&reg.path("src/one"), &SnapSpec::new(&image));
    reg.run(&["add", reg.path("src/one").to_str().unwrap()])
        .ok();
    reg
}

#[test]
fn output_paths_are_checked_before_anything_is_written() {
    let reg = registry_with_one();
    let missing = reg.path("no/such/dir");
    let target = missing.join("one.tar.zst");
    reg.run(&["export", "one", "-o", target.to_str().unwrap()])
        .fails(
            3,
            &format!("error: output directory not found: {}", missing.display()),
        );
    assert!(!reg.path("no").exists());
    let dir = reg.path("out");
    std::fs::create_dir(&dir).unwrap();
    reg.run(&["export", "one", "-o", dir.to_str().unwrap()])
        .fails(
            2,
            &format!(
                "error: output {} is a directory; give the archive's file name",
                dir.display()
            ),
        );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn partial_files_of_killed_exports_are_cleared_but_live_ones_stay() {
    let reg = registry_with_one();
    let out = reg.path("out");
    std::fs::create_dir(&out).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let partial = |name: &str, age: Option<std::time::SystemTime>| {
        let path = out.join(name);
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(1 << 20).unwrap();
        if let Some(t) = age {
            f.set_modified(t).unwrap();
        }
        (path, f)
    };
    let (killed, _) = partial(".one.tar.zst.aB3dE9.partial", Some(old));
    let (locked, held) = partial(".one.tar.zst.Zz9yX8.partial", Some(old));
    held.lock().unwrap();
    let (fresh, _) = partial(".one.tar.zst.Qq1wE2.partial", None);
    let (other, _) = partial(".two.tar.zst.aB3dE9.partial", Some(old));
    let (unrelated, _) = partial(".one.tar.zst.notours", Some(old));

    reg.run(&[
        "export",
        "one",
        "-o",
        out.join("one.tar.zst").to_str().unwrap(),
    ])
    .ok();
    assert!(!killed.exists(), "a killed export's partial file stayed");
    for kept in [&locked, &fresh, &other, &unrelated] {
        assert!(kept.exists(), "{} was removed", kept.display());
    }
    drop(held);
}

#[test]
fn missing_parent_is_named() {
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("cache"), "python:3.12", 5, &[4096]);
    let absent = make_snapshot(&reg.path("src/absent"), &SnapSpec::new(&image));
    let child = make_snapshot(
        &reg.path("src/child"),
        &SnapSpec::new(&image).label("k", "v").parent(absent),
    );
    reg.run(&["add", reg.path("src/child").to_str().unwrap()])
        .ok();
    let out = reg.path("c.tar");
    let run = reg
        .run(&[
            "export",
            "child",
            "--with-parents",
            "-o",
            out.to_str().unwrap(),
        ])
        .fails(3, &absent.to_string());
    assert!(run.stderr.contains(&child.to_string()), "{}", run.stderr);
    assert!(!out.exists());

    let r: ExportReport = reg.json(&["export", "child", "-o", out.to_str().unwrap()]);
    assert_eq!(r.snapshots, [child]);
    let r: ExportReport = reg.json(&[
        "export",
        "child",
        "--base",
        &absent.to_string(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.snapshots, [child], "a base the registry lacks is allowed");
}

#[test]
fn base_exports_the_chain_above_it() {
    let reg = Reg::new();
    let (d, image) = chain_in_registry(&reg);
    let (r, tar) = export(&reg, &["app", "--base", "base", "--plain-tar"]);
    assert_eq!(r.snapshots, d[1..]);
    let names: Vec<String> = members(&tar).into_iter().map(|m| m.name).collect();
    assert_eq!(names, snapshot_members(&d[1..]));
    let (r, _) = export(&reg, &["app", "--base", "deps", "--with-parents"]);
    assert_eq!(r.snapshots, d[2..]);

    let other = reg.path("src/other");
    make_snapshot(&other, &SnapSpec::new(&image).label("other", "1"));
    reg.run(&["add", other.to_str().unwrap()]).ok();
    let out = reg.path("x.tar");
    let o = out.to_str().unwrap();
    reg.run(&["export", "app", "--base", "other", "-o", o])
        .fails(2, "is not an ancestor of");
    reg.run(&["export", "app", "--base", "app", "-o", o])
        .fails(2, "the head itself");
    reg.run(&["export", "app", "--base", "nope", "-o", o])
        .fails(3, "not found: nope");
    assert!(!out.exists());
}

#[test]
fn stdout_streams_the_same_bytes() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let (_, file_bytes) = export(&reg, &["app", "--with-parents", "--with-image"]);
    let out = reg
        .command(&["export", "app", "--with-parents", "--with-image", "-o", "-"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, file_bytes);

    reg.run(&["export", "app", "-o", "-", "--json"])
        .fails(2, "--json needs -o FILE");
}

#[test]
fn with_image_takes_exactly_the_image_files() {
    let reg = Reg::new();
    let (d, image) = chain_in_registry(&reg);
    let cache2 = reg.path("cache2");
    let image2 = make_image_cache(&cache2, "alpine:3", 9, &[4096, 8192]);
    let mut spec = SnapSpec::new(&image2);
    spec.image.0 = "alpine:3".into();
    let dir = reg.path("src/alp");
    make_snapshot(&dir, &spec);
    reg.run(&[
        "add",
        dir.to_str().unwrap(),
        "--cache-dir",
        cache2.to_str().unwrap(),
    ])
    .ok();

    let (r, tar) = export(&reg, &["deps", "--with-image", "--plain-tar"]);
    assert_eq!(r.snapshots, [d[1]]);
    let cache: Vec<String> = members(&tar)
        .into_iter()
        .map(|m| m.name)
        .filter(|n| n.starts_with("cache/"))
        .collect();
    assert_eq!(cache, image_members(&image));

    let layer = CacheFile {
        kind: CacheKind::Layers,
        key: image.layers[1].diff_id,
    };
    let path = reg.root().join("cache").join(layer.rel_path());
    std::fs::remove_file(&path).unwrap();
    let out = reg.path("img.tar");
    reg.run(&[
        "export",
        "deps",
        "--with-image",
        "-o",
        out.to_str().unwrap(),
    ])
    .fails(
        5,
        &format!("{}: recorded in the index but missing", path.display()),
    );
    std::fs::write(&path, b"short").unwrap();
    reg.run(&[
        "export",
        "deps",
        "--with-image",
        "-o",
        out.to_str().unwrap(),
    ])
    .fails(5, "size is 5 bytes");
    assert!(!out.exists());

    let (r, _) = export(&reg, &["deps"]);
    assert!(r.cache_files.is_empty(), "no image without --with-image");
}

#[test]
fn uncached_image_is_not_found() {
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("cache"), "python:3.12", 2, &[4096]);
    let dir = reg.path("src/s");
    make_snapshot(&dir, &SnapSpec::new(&image));
    reg.run(&["add", dir.to_str().unwrap()]).ok();
    let out = reg.path("s.tar");
    reg.run(&["export", "s", "--with-image", "-o", out.to_str().unwrap()])
        .fails(3, "image not found: python:3.12@");
}

#[test]
fn failure_before_rename_keeps_the_old_target() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let dir = reg.path("out");
    std::fs::create_dir_all(&dir).unwrap();
    let archive = dir.join("a.tar.zst");
    std::fs::write(&archive, b"old").unwrap();
    reg.run_env(
        &["export", "app", "-o", archive.to_str().unwrap()],
        &[("MSB_FAILPOINT", "export.before-rename:error")],
    )
    .fails(1, "failpoint export.before-rename fired");
    assert_eq!(std::fs::read(&archive).unwrap(), b"old");
    assert_eq!(entries(&dir), ["a.tar.zst"]);
    reg.run(&["export", "app", "-o", archive.to_str().unwrap()])
        .ok();
    assert_ne!(std::fs::read(&archive).unwrap(), b"old");
}

#[test]
fn layout_matches_microsandbox_save() {
    let Some(fixtures) = fixtures() else { return };
    let reg = Reg::new();
    let x = reg.path("x");
    std::fs::create_dir_all(&x).unwrap();
    let seed = std::fs::read(fixtures.join("seed-save-chain-with-image.tar.zst")).unwrap();
    let seed_tar = unzstd(&seed);
    let seed_path = reg.path("seed.tar");
    std::fs::write(&seed_path, &seed_tar).unwrap();
    tar_cmd(&["-xf", seed_path.to_str().unwrap()], Some(&x));
    let names = ["py-base", "py-deps", "py-app"];
    let prefixes = [
        "sha256-d1d9a1389dee0baa",
        "sha256-f14d557350c56427",
        "sha256-93344f4a0fdffb88",
    ];
    for (i, (name, prefix)) in names.iter().zip(prefixes).enumerate() {
        let dir = x.join(prefix);
        let cache = x.join("cache");
        let mut args = vec!["add", dir.to_str().unwrap(), "--name", name];
        if i == 0 {
            args.extend(["--cache-dir", cache.to_str().unwrap()]);
        }
        reg.run(&args).ok();
    }
    let (_, tar) = export(
        &reg,
        &[
            "py-app",
            "--with-parents",
            "--with-image",
            "--dense",
            "--plain-tar",
        ],
    );
    let strip = |ms: Vec<Member>| -> Vec<(String, u8, u64, u64, u64, String)> {
        ms.into_iter()
            .map(|m| (m.name, m.kind, m.stored, m.mode, m.uid, m.owner_names))
            .collect()
    };
    assert_eq!(strip(members(&tar)), strip(members(&seed_tar)));
}
