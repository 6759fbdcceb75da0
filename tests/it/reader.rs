//! The tar reader's bounds and edges through the real binary: sparse
//! members of any extent count round-trip (export → import), numeric fields
//! read as GNU tar reads them, logical sizes bounded and checked at the
//! header, bytes after the end-of-archive marker bounded, and realistic
//! ext4 uppers (mkfs.ext4 + debugfs) round-tripping from a file and from a
//! stalling pipe. Every refusal asserts the exit code, the error line, an
//! unchanged registry and empty staging.

use std::path::PathBuf;
use std::time::Duration;

use msb_registry::model::digest::Digest;
use msb_registry::model::image::{CacheFile, CacheKind};
use msb_registry::model::manifest::{Format, ImagePin, Manifest, Upper};
use msb_registry::sample::ext4::{self, Round};
use msb_registry::sample::{SnapshotSpec, write_manifest};

use crate::chaos::{exported_extents, file_digest, import_through_stalling_pipe};
use crate::corpus::{self, extents_snapshot};
use crate::tarcraft::{Flavour, Tar, header, seal};
use crate::util::Reg;

/// A registry holding one snapshot, so "unchanged" means something.
fn populated() -> Reg {
    let reg = Reg::new();
    let dir = reg.path("first");
    extents_snapshot(&dir, 3, 4096, 8192, true);
    reg.run(&["add", dir.to_str().unwrap(), "--name", "first"])
        .ok();
    reg
}

fn staging_entries(reg: &Reg) -> Vec<String> {
    std::fs::read_dir(reg.root().join("staging"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Import `bytes` from a file; assert exit `code` and the exact error line
/// (`{archive}` stands for the archive's path), and that the registry and
/// staging are exactly as before.
#[track_caller]
fn refused_exactly(reg: &Reg, bytes: &[u8], args: &[&str], code: i32, line: &str) {
    let before = (reg.tree(), reg.dump());
    let path = reg.path("hostile.tar");
    std::fs::write(&path, bytes).unwrap();
    let path = path.to_str().unwrap();
    let mut all = vec!["import", path];
    all.extend(args);
    let run = reg.run(&all).fails(code, "");
    assert_eq!(
        run.stderr.trim_end(),
        format!("error: {}", line.replace("{archive}", path))
    );
    assert_eq!((reg.tree(), reg.dump()), before, "registry changed");
    assert_eq!(staging_entries(reg), Vec::<String>::new(), "staging left");
    reg.run(&["verify", "--content"]).ok();
}

fn manifest_bytes(size: u64) -> (Vec<u8>, String) {
    let m = Manifest {
        schema: 1,
        format: Format::Raw,
        fstype: "ext4".into(),
        image: ImagePin {
            reference: "python:3.12".into(),
            manifest_digest: corpus::image_pin(),
        },
        parent: None,
        created_at: "2026-10-01T09:00:00Z".into(),
        labels: Default::default(),
        upper: Upper {
            file: "upper.ext4".into(),
            size_bytes: size,
            integrity: None,
        },
        source_sandbox: None,
    };
    (m.canonical_bytes(), m.digest().archive_prefix())
}

fn base256(field: &mut [u8], value: u64) {
    field.fill(0);
    let n = field.len();
    field[n - 8..].copy_from_slice(&value.to_be_bytes());
    field[0] = 0x80;
}

/// A GNU sparse member of `real` logical bytes holding 512 bytes of data at
/// offset 0, its sizes in base-256 where octal cannot hold them.
fn huge_sparse(t: &mut Tar, path: &str, real: u64) {
    let mut h = header(Flavour::Gnu, b'S', path.as_bytes(), 512, b"");
    for (at, v) in [(386, 0u64), (398, 512), (410, real), (422, 0)] {
        base256(&mut h[at..at + 12], v);
    }
    base256(&mut h[483..495], real);
    seal(&mut h);
    t.bytes.extend_from_slice(&h);
    t.bytes.extend([7u8; 512]);
}

/// Export → import of uppers with extents of 4 KiB every 8 KiB, through the
/// binary. 100,000 extents (400 MiB of data; minutes on a slow disk) and
/// more run with `MSB_EXTENTS_MAX=100000`; the suite stops at 3,000 and
/// reads a 100,000-extent map in [`a_100k_extent_map_streams_through_the_reader`].
#[test]
fn sparse_members_of_any_extent_count_round_trip() {
    let max: u64 = std::env::var("MSB_EXTENTS_MAX")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    for n in [4, 5, 25, 26, 2566, 2567, 3000, 100_000, 1_000_000] {
        if n > max {
            continue;
        }
        let src = Reg::new();
        let (archive, upper) = exported_extents(&src, n);
        let reg = Reg::new();
        let (run, peak_kib) = crate::chaos::import_measuring_rss(&reg, &archive);
        let report: serde_json::Value = run.ok().json();
        let name = report["name"].as_str().unwrap();
        let installed = reg.root().join(format!("snapshots/{name}/upper.ext4"));
        assert_eq!(file_digest(&installed), file_digest(&upper), "{n} extents");
        assert_eq!(
            msb_registry::sample::ext4::stats(&installed)
                .unwrap()
                .extents as u64,
            n,
            "{n} extents stay {n} extents"
        );
        eprintln!("{n} extents: import peak RSS {peak_kib:?} KiB");
        if let Some(kib) = peak_kib.filter(|_| n >= 100_000) {
            assert!(kib <= 64 * 1024, "{n} extents: import RSS {kib} KiB");
        }
        reg.run(&["verify", "--content"]).ok();
    }
}

/// A GNU sparse member of `n` extents of `len` bytes every `stride` bytes,
/// with a manifest declaring it, as one plain tar archive (no integrity
/// recorded, so nothing but the map and the data is checked).
fn many_extents_archive(n: u64, len: usize, stride: u64) -> (Vec<u8>, String) {
    let real = (n - 1) * stride + len as u64;
    let (manifest, prefix) = manifest_bytes(real);
    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &manifest);
    let extents: Vec<(u64, Vec<u8>)> = (0..n)
        .map(|i| (i * stride, corpus::extent_bytes(i, len)))
        .collect();
    t.sparse(&format!("{prefix}/upper.ext4"), real, &extents);
    (t.finish(), prefix)
}

/// 100,000 extents read by the tar reader alone: the map (past the 65,536
/// entries held in memory, so spilled) comes back in order, every extent's
/// bytes at its offset, the holes between them as zeros.
#[test]
fn a_100k_extent_map_streams_through_the_reader() {
    use msb_registry::{TarChunk as Chunk, TarReader};
    let (n, len, stride) = (100_000u64, 512usize, 4096u64);
    let (bytes, _) = many_extents_archive(n, len, stride);
    let spill = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tar = TarReader::new(&bytes[..], spill.path());
        let manifest = tar.next().await.unwrap().unwrap();
        assert_eq!(manifest.extents, 0);
        let upper = tar.next().await.unwrap().unwrap();
        assert_eq!(
            (upper.extents, upper.size),
            (n, (n - 1) * stride + len as u64)
        );
        let mut buf = vec![0u8; 64 * 1024];
        let (mut pos, mut extents) = (0u64, 0u64);
        while let Some(chunk) = tar.read_data(&mut buf).await.unwrap() {
            match chunk {
                Chunk::Zeros(z) => {
                    assert_eq!(pos % stride, len as u64, "a hole after each extent");
                    pos += z;
                }
                Chunk::Data(k) => {
                    assert_eq!(k, len);
                    assert_eq!(&buf[..k], &corpus::extent_bytes(pos / stride, len)[..]);
                    pos += k as u64;
                    extents += 1;
                }
            }
        }
        assert_eq!((pos, extents), (upper.size, n));
        assert!(tar.next().await.unwrap().is_none());
        tar.finish().await.unwrap();
    });
}

/// The 1,000,000-extent case of the issue, through the binary, with its
/// peak RSS: `MSB_EXTENTS_1M=1` (512-byte extents every 1 KiB, so the
/// staged upper is 1 GiB).
#[test]
fn a_million_extents_import_in_bounded_memory() {
    if std::env::var_os("MSB_EXTENTS_1M").is_none() {
        eprintln!("skipping: set MSB_EXTENTS_1M=1 to import a 1,000,000-extent member");
        return;
    }
    let (bytes, prefix) = many_extents_archive(1_000_000, 512, 1024);
    let reg = Reg::new();
    let archive = reg.path("million.tar");
    std::fs::write(&archive, &bytes).unwrap();
    drop(bytes);
    let (run, rss) = crate::chaos::import_measuring_rss(&reg, &archive);
    run.ok();
    eprintln!("1,000,000 extents: import peak RSS {rss:?} KiB");
    if let Some(kib) = rss {
        assert!(kib <= 64 * 1024, "import RSS {kib} KiB");
    }
    let upper = reg.root().join(format!("snapshots/{prefix}/upper.ext4"));
    assert_eq!(
        std::fs::metadata(upper).unwrap().len(),
        999_999 * 1024 + 512
    );
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn refuses_base256_sizes_gnu_tar_refuses() {
    let reg = populated();
    let (manifest, prefix) = manifest_bytes(4096);
    let build = |field: [u8; 12]| {
        let mut t = Tar::new();
        t.file(&format!("{prefix}/manifest.json"), &manifest);
        let mut h = header(
            Flavour::Gnu,
            b'0',
            format!("{prefix}/upper.ext4").as_bytes(),
            0,
            b"",
        );
        h[124..136].copy_from_slice(&field);
        seal(&mut h);
        t.bytes.extend_from_slice(&h);
        t.bytes.extend([5u8; 4096]);
        t.finish()
    };
    let mut high = [0u8; 12];
    base256(&mut high, 4096);
    high[1] = 1;
    refused_exactly(
        &reg,
        &build(high),
        &[],
        6,
        &format!(
            "rejected archive: {{archive}}: corrupt tar stream: size field is out of range (over 2^63 - 1) after member {prefix}/manifest.json"
        ),
    );
    let mut top = [0u8; 12];
    base256(&mut top, 1 << 63);
    refused_exactly(
        &reg,
        &build(top),
        &[],
        6,
        &format!(
            "rejected archive: {{archive}}: corrupt tar stream: size field is out of range (over 2^63 - 1) after member {prefix}/manifest.json"
        ),
    );
    refused_exactly(
        &reg,
        &build([0xff; 12]),
        &[],
        6,
        &format!(
            "rejected archive: {{archive}}: corrupt tar stream: size field is negative (base-256 with the sign bit) after member {prefix}/manifest.json"
        ),
    );
    let mut odd = [0u8; 12];
    base256(&mut odd, 4096);
    odd[0] = 0xc0;
    refused_exactly(
        &reg,
        &build(odd),
        &[],
        6,
        &format!(
            "rejected archive: {{archive}}: corrupt tar stream: size field is not an octal or base-256 number after member {prefix}/manifest.json"
        ),
    );
    // The same size in plain base-256 is read, as GNU tar reads it.
    let mut fine = [0u8; 12];
    base256(&mut fine, 4096);
    let path = reg.path("fine.tar");
    std::fs::write(&path, build(fine)).unwrap();
    reg.run(&["import", path.to_str().unwrap()]).ok();
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn refuses_huge_sparse_holes_at_the_header() {
    let reg = populated();
    let huge = 1u64 << 62;
    // An upper whose manifest agrees with the 2^62-byte claim: over the limit.
    let (manifest, prefix) = manifest_bytes(huge);
    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &manifest);
    huge_sparse(&mut t, &format!("{prefix}/upper.ext4"), huge);
    refused_exactly(
        &reg,
        &t.finish(),
        &[],
        6,
        &format!(
            "rejected archive: {prefix}/upper.ext4: logical size of {huge} bytes is over the limit of 1099511627776 bytes per file (raise it with --max-file-size)"
        ),
    );
    // An upper whose manifest says otherwise: refused at the header too.
    let (manifest, prefix) = manifest_bytes(8192);
    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &manifest);
    huge_sparse(&mut t, &format!("{prefix}/upper.ext4"), huge);
    refused_exactly(
        &reg,
        &t.finish(),
        &["--max-file-size", &u64::MAX.to_string()],
        5,
        &format!(
            "integrity failure: {prefix}/upper.ext4: size is {huge} bytes, manifest records 8192"
        ),
    );
    // An extra snapshot file.
    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &manifest);
    huge_sparse(&mut t, &format!("{prefix}/extra.img"), huge);
    refused_exactly(
        &reg,
        &t.finish(),
        &[],
        6,
        &format!(
            "rejected archive: {prefix}/extra.img: logical size of {huge} bytes is over the limit of 1099511627776 bytes per file (raise it with --max-file-size)"
        ),
    );
    // A cache layer.
    let layer = CacheFile {
        kind: CacheKind::Layers,
        key: Digest::of(b"layer"),
    };
    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &manifest);
    huge_sparse(&mut t, &format!("cache/{}", layer.rel_path()), huge);
    refused_exactly(
        &reg,
        &t.finish(),
        &[],
        6,
        &format!(
            "rejected archive: cache/{}: logical size of {huge} bytes is over the limit of 1099511627776 bytes per file (raise it with --max-file-size)",
            layer.rel_path()
        ),
    );
}

#[test]
fn max_file_size_sets_the_limit() {
    let reg = populated();
    let src = Reg::new();
    let (archive, _) = exported_extents(&src, 4);
    let bytes = std::fs::read(&archive).unwrap();
    let size = 3 * 8192 + 4096 + 8192;
    let prefix = {
        let dir = src.path("extents-4");
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m["upper"]["size_bytes"], size);
        Digest::of(&std::fs::read(dir.join("manifest.json")).unwrap()).archive_prefix()
    };
    refused_exactly(
        &reg,
        &bytes,
        &["--max-file-size", &(size - 1).to_string()],
        6,
        &format!(
            "rejected archive: {prefix}/upper.ext4: logical size of {size} bytes is over the limit of {} bytes per file (raise it with --max-file-size)",
            size - 1
        ),
    );
    reg.run(&[
        "import",
        archive.to_str().unwrap(),
        "--max-file-size",
        &size.to_string(),
    ])
    .ok();
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn bounds_the_bytes_after_the_end_of_archive() {
    let reg = populated();
    let (manifest, prefix) = manifest_bytes(4096);
    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &manifest);
    t.file(&format!("{prefix}/upper.ext4"), &[9u8; 4096]);
    let good = t.finish();

    let mut over = good.clone();
    over.extend(vec![0u8; (1 << 20) + 512]);
    refused_exactly(
        &reg,
        &over,
        &[],
        6,
        "rejected archive: {archive}: more than 1048576 bytes after the end-of-archive marker",
    );
    let mut garbage = good.clone();
    garbage.extend(b"#!/bin/sh\n");
    refused_exactly(
        &reg,
        &garbage,
        &[],
        6,
        "rejected archive: {archive}: non-zero bytes after the end-of-archive marker",
    );
    let mut lone = t.clone();
    lone.bytes.extend([0u8; 512]);
    lone.file(&format!("{prefix}/other"), b"x");
    refused_exactly(
        &reg,
        &lone.finish(),
        &[],
        6,
        &format!(
            "rejected archive: {{archive}}: corrupt tar stream: a lone zero block inside the archive (GNU tar stops there) after member {prefix}/upper.ext4"
        ),
    );
    // Padding as tar writes it (a whole record of 20 blocks, and more with -b) is fine.
    let mut padded = good.clone();
    padded.resize(good.len().div_ceil(10240) * 10240 + 64 * 512, 0);
    let path = reg.path("padded.tar");
    std::fs::write(&path, padded).unwrap();
    reg.run(&["import", path.to_str().unwrap()]).ok();
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn import_of_dev_zero_ends_with_a_clear_error() {
    let reg = populated();
    let before = (reg.tree(), reg.dump());
    reg.run(&["import", "/dev/zero"]).fails(
        6,
        "rejected archive: /dev/zero: more than 1048576 bytes after the end-of-archive marker",
    );
    assert_eq!((reg.tree(), reg.dump()), before);
    assert!(staging_entries(&reg).is_empty());
}

/// Real ext4 uppers (mkfs.ext4 + debugfs -w): a parent and a child made
/// from it, exported sparse and dense, imported from a file and from a
/// pipe that stalls at random (sparse from both, dense from the pipe).
#[test]
fn realistic_ext4_uppers_round_trip() {
    if !ext4::tools_available() {
        eprintln!("skipping: mkfs.ext4 or debugfs is missing");
        return;
    }
    let src = Reg::new();
    let image = crate::util::make_image_cache(&src.path("cache"), "python:3.12", 3, &[8192]);
    let spec = SnapshotSpec {
        parent: None,
        len: 0,
        data: Vec::new(),
        integrity: Some("msb-sparse-sha256-v1"),
        image: ("python:3.12".into(), image.manifest_digest),
        created_at: "2026-10-01T09:00:00Z".into(),
        labels: Default::default(),
        source_sandbox: Some("ext4".into()),
    };
    let started = std::time::Instant::now();
    let parent_dir = src.path("parent");
    std::fs::create_dir_all(&parent_dir).unwrap();
    let p = ext4::make_upper(
        &parent_dir.join("upper.ext4"),
        128 << 20,
        &Round {
            max_file: 16 << 10,
            ..Round::new(1, 40, 100)
        },
    )
    .unwrap();
    let parent = write_manifest(&parent_dir, &spec).unwrap();
    let child_dir = src.path("child");
    std::fs::create_dir_all(&child_dir).unwrap();
    let c = ext4::make_child(
        &parent_dir.join("upper.ext4"),
        &child_dir.join("upper.ext4"),
        &Round {
            max_file: 16 << 10,
            rewrites: 100,
            ..Round::new(2, 6, 80)
        },
        "r1",
    )
    .unwrap();
    let mut child_spec = spec.clone();
    child_spec.parent = Some(parent);
    write_manifest(&child_dir, &child_spec).unwrap();
    eprintln!(
        "ext4 uppers: parent {} extents ({} KiB data), child {} extents ({} KiB data), made in {:?}",
        p.extents,
        p.data_bytes >> 10,
        c.extents,
        c.data_bytes >> 10,
        started.elapsed()
    );
    let started = std::time::Instant::now();
    assert!(p.extents >= 1000, "a realistic upper: {p:?}");
    let cache = src.path("cache");
    src.run(&[
        "add",
        parent_dir.to_str().unwrap(),
        "--name",
        "parent",
        "--cache-dir",
        cache.to_str().unwrap(),
    ])
    .ok();
    src.run(&["add", child_dir.to_str().unwrap(), "--name", "child"])
        .ok();
    let uppers: Vec<(PathBuf, Digest)> = [&parent_dir, &child_dir]
        .iter()
        .map(|d| (d.join("upper.ext4"), file_digest(&d.join("upper.ext4"))))
        .collect();
    for (k, dense) in [false, true].into_iter().enumerate() {
        let archive = src.path(&format!("chain-{k}.tar.zst"));
        let mut args = vec![
            "export",
            "child",
            "--with-parents",
            "--with-image",
            "-o",
            archive.to_str().unwrap(),
        ];
        if dense {
            args.push("--dense");
        }
        src.run(&args).ok();
        let bytes = std::fs::read(&archive).unwrap();
        let modes: &[bool] = if dense { &[true] } else { &[false, true] };
        for &from_pipe in modes {
            let reg = Reg::new();
            if from_pipe {
                import_through_stalling_pipe(&reg, &bytes, Duration::from_millis(300), k as u64)
                    .ok();
            } else {
                reg.run(&["import", archive.to_str().unwrap()]).ok();
            }
            for (name, (_, digest)) in ["parent", "child"].iter().zip(&uppers) {
                let installed = installed_upper(&reg, name, &src);
                assert_eq!(
                    &file_digest(&installed),
                    digest,
                    "{name}, dense {dense}, pipe {from_pipe}"
                );
            }
            reg.run(&["verify", "--content"]).ok();
            eprintln!("{:?} dense {dense} pipe {from_pipe}", started.elapsed());
        }
    }
}

/// The installed upper of the snapshot called `name` in `src`, found in `reg` by digest.
fn installed_upper(reg: &Reg, name: &str, src: &Reg) -> PathBuf {
    let shown: serde_json::Value = src.json(&["show", name]);
    let digest = shown["digest"].as_str().unwrap();
    let rows: Vec<serde_json::Value> = reg.json(&[
        "sql",
        &format!("SELECT name FROM snapshots WHERE digest = '{digest}'"),
    ]);
    let there = rows[0]["name"].as_str().unwrap();
    reg.root().join(format!("snapshots/{there}/upper.ext4"))
}
