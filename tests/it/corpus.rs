//! The archive corpus the chaos and differential tests run over: the fuzz
//! seeds, microsandbox's own archives (../shared/fixtures), our exports of
//! a chain (sparse and dense, zstd and plain), GNU tar's own sparse
//! archives at the edges of its map (4, 5, 25, 26 extents: the header's
//! four slots and the first extension block's 21), the smuggling archive
//! (forged tar headers inside a sparse member's data), and hand-made
//! hostile ones aimed at the reader's rules.

#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use msb_registry::model::digest::Digest;
use msb_registry::sample::{SnapshotSpec, write_manifest};

use crate::tarcraft::{Flavour, Tar, data_extents, header, seal};
use crate::util::{Reg, chain_in_registry};

/// One archive of the corpus.
pub struct Archive {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The image every corpus snapshot pins (no cache files are shipped for it).
pub fn image_pin() -> Digest {
    Digest::of(b"corpus image")
}

fn spec(integrity: Option<&'static str>) -> SnapshotSpec {
    SnapshotSpec {
        parent: None,
        len: 0,
        data: Vec::new(),
        integrity,
        image: ("python:3.12".into(), image_pin()),
        created_at: "2026-10-01T09:00:00Z".into(),
        labels: Default::default(),
        source_sandbox: None,
    }
}

/// The data of extent `i`: non-zero, different for every extent.
pub fn extent_bytes(i: u64, len: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8 + 1; len];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v[8] |= 1;
    v
}

/// Write `dir/upper.ext4` with `n` data extents of `len` bytes every
/// `stride` bytes (a hole after the last one when `tail_hole`), and its
/// manifest; returns the snapshot's digest.
pub fn extents_snapshot(dir: &Path, n: u64, len: usize, stride: u64, tail_hole: bool) -> Digest {
    extents_snapshot_with(dir, n, len, stride, tail_hole, |i, len| {
        extent_bytes(i, len)
    })
}

/// [`extents_snapshot`] with the extents' bytes given by `data`.
pub fn extents_snapshot_with(
    dir: &Path,
    n: u64,
    len: usize,
    stride: u64,
    tail_hole: bool,
    data: impl Fn(u64, usize) -> Vec<u8>,
) -> Digest {
    std::fs::create_dir_all(dir).unwrap();
    let upper = File::create(dir.join("upper.ext4")).unwrap();
    let size = if n == 0 {
        stride
    } else {
        (n - 1) * stride + len as u64 + if tail_hole { stride } else { 0 }
    };
    upper.set_len(size).unwrap();
    for i in 0..n {
        upper.write_all_at(&data(i, len), i * stride).unwrap();
    }
    drop(upper);
    write_manifest(dir, &spec(Some("msb-sparse-sha256-v1"))).unwrap()
}

/// Move the snapshot directory `dir` to `<parent>/<archive prefix>` and
/// return that path.
pub fn under_prefix(dir: &Path, digest: &Digest) -> PathBuf {
    let to = dir.parent().unwrap().join(digest.archive_prefix());
    std::fs::rename(dir, &to).unwrap();
    to
}

/// GNU tar's own archive (`tar --sparse --format=gnu`) of the snapshot
/// directories `snaps` (each named by its prefix, all in one directory):
/// each manifest, then its upper.
pub fn gnu_tar(snaps: &[&Path]) -> Vec<u8> {
    let out = snaps[0].with_extension("tar");
    let mut cmd = Command::new("tar");
    cmd.arg("--sparse")
        .arg("--format=gnu")
        .arg("-cf")
        .arg(&out)
        .arg("-C")
        .arg(snaps[0].parent().unwrap());
    for snap in snaps {
        let prefix = snap.file_name().unwrap().to_str().unwrap();
        cmd.arg(format!("{prefix}/manifest.json"))
            .arg(format!("{prefix}/upper.ext4"));
    }
    assert!(cmd.status().unwrap().success(), "tar --sparse -cf failed");
    std::fs::read(out).unwrap()
}

/// GNU tar's sparse archive of an upper with `n` extents of 4 KiB every
/// 8 KiB, ending in data (so its map has exactly `n` entries).
pub fn gnu_sparse(work: &Path, n: u64) -> Archive {
    let dir = work.join(format!("gnu-{n}"));
    let d = extents_snapshot(&dir, n, 4096, 8192, false);
    let snap = under_prefix(&dir, &d);
    Archive {
        name: format!("gnu-tar-sparse-{n}-extents"),
        bytes: gnu_tar(&[&snap]),
    }
}

/// A tar header for `path` with `size` bytes of data, sealed.
pub fn forged_header(path: &str, size: u64) -> [u8; 512] {
    let mut h = header(Flavour::Gnu, b'0', path.as_bytes(), size, b"");
    seal(&mut h);
    h
}

/// The smuggling archive: GNU tar's archive of two snapshots, the second
/// an upper of 30 extents (so its sparse map needs extension blocks) whose
/// data is forged headers for `<first prefix>/evil.sh`, each followed by
/// its data, at every 1 KiB. GNU tar extracts the two manifests and uppers only; a
/// reader that loses its place in the extension blocks reads the forged
/// member. Returns the archive and the first snapshot's prefix.
pub fn smuggling(work: &Path) -> (Archive, String) {
    let a = work.join("smuggle-a");
    let da = extents_snapshot(&a, 2, 4096, 8192, true);
    let a = under_prefix(&a, &da);
    let target = da.archive_prefix();
    let b = work.join("smuggle-b");
    let db = extents_snapshot_with(&b, 30, 4096, 8192, true, |i, len| {
        let mut v = extent_bytes(i, len);
        for pair in v.chunks_mut(1024) {
            pair[..512].copy_from_slice(&forged_header(&format!("{target}/evil.sh"), 11));
            pair[512..].fill(0);
            pair[512..523].copy_from_slice(b"echo pwned\n");
        }
        v
    });
    let b = under_prefix(&b, &db);
    (
        Archive {
            name: "smuggling-forged-headers-in-sparse-data".into(),
            bytes: gnu_tar(&[&a, &b]),
        },
        target,
    )
}

/// A valid one-snapshot archive (manifest + dense upper) written with tarcraft.
pub fn small_snapshot(work: &Path) -> (String, Vec<u8>, Vec<u8>) {
    let dir = work.join("small");
    let d = extents_snapshot(&dir, 3, 4096, 16384, true);
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    let upper = std::fs::read(dir.join("upper.ext4")).unwrap();
    (d.archive_prefix(), manifest, upper)
}

/// Hand-made archives aimed at the reader's rules (most must be refused).
pub fn handmade(work: &Path) -> Vec<Archive> {
    let (prefix, manifest, upper) = small_snapshot(work);
    let mut out = Vec::new();
    let mut push = |name: &str, bytes: Vec<u8>| {
        out.push(Archive {
            name: name.into(),
            bytes,
        })
    };
    let base = || {
        let mut t = Tar::new();
        t.file(&format!("{prefix}/manifest.json"), &manifest);
        t
    };
    let mut t = base();
    t.file(&format!("{prefix}/upper.ext4"), &upper);
    let good = t.finish();
    push("handmade-dense", good.clone());

    // The upper's size field in base-256: valid, high bytes set, negative.
    let size_at = good.len() - 1024 - upper.len().div_ceil(512) * 512 - 512 + 124;
    for (name, field) in [
        ("handmade-base256-size", {
            let mut f = [0u8; 12];
            f[0] = 0x80;
            f[4..].copy_from_slice(&(upper.len() as u64).to_be_bytes());
            f
        }),
        ("handmade-base256-size-high-bytes", {
            let mut f = [0u8; 12];
            f[0] = 0x80;
            f[2] = 1;
            f[4..].copy_from_slice(&(upper.len() as u64).to_be_bytes());
            f
        }),
        ("handmade-base256-size-negative", [0xff; 12]),
    ] {
        let mut bytes = good.clone();
        bytes[size_at..size_at + 12].copy_from_slice(&field);
        let h: &mut [u8; 512] = (&mut bytes[size_at - 124..size_at + 388])
            .try_into()
            .unwrap();
        seal(h);
        push(name, bytes);
    }

    let mut bytes = good.clone();
    bytes.extend(vec![0u8; 8192]);
    push("handmade-zero-padding-after-end", bytes);
    let mut bytes = good.clone();
    bytes.extend(b"garbage after the end");
    push("handmade-garbage-after-end", bytes);

    let mut t = base();
    t.bytes.extend([0u8; 512]);
    t.file(&format!("{prefix}/upper.ext4"), &upper);
    push("handmade-lone-zero-block", t.finish());

    let extents = data_extents(&upper);
    let mut t = base();
    t.sparse(
        &format!("{prefix}/upper.ext4"),
        upper.len() as u64,
        &extents,
    );
    push("handmade-sparse", t.finish());

    // Overlapping extents (GNU tar writes the later over the earlier).
    let mut overlapping = extents.clone();
    overlapping[1].0 = overlapping[0].0 + 512;
    let mut t = base();
    t.sparse(
        &format!("{prefix}/upper.ext4"),
        upper.len() as u64,
        &overlapping,
    );
    push("handmade-sparse-overlapping", t.finish());

    // A map that stops short of the real size (no final empty entry).
    let mut t = base();
    let start = t.bytes.len();
    t.sparse(
        &format!("{prefix}/upper.ext4"),
        upper.len() as u64,
        &extents,
    );
    let h: &mut [u8; 512] = (&mut t.bytes[start..start + 512]).try_into().unwrap();
    let last = 386 + 24 * extents.len();
    h[last..last + 24].fill(0);
    seal(h);
    push("handmade-sparse-map-short", t.finish());

    // 'S' in a POSIX ustar header: GNU tar does not read it as sparse.
    let mut t = base();
    let start = t.bytes.len();
    t.sparse(
        &format!("{prefix}/upper.ext4"),
        upper.len() as u64,
        &extents,
    );
    let h: &mut [u8; 512] = (&mut t.bytes[start..start + 512]).try_into().unwrap();
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    seal(h);
    push("handmade-sparse-in-ustar-header", t.finish());

    // A pax path and size that GNU tar applies.
    let mut t = Tar::new();
    t.pax(&[("path", format!("{prefix}/manifest.json").as_bytes())]);
    t.file("placeholder", &manifest);
    t.pax(&[("size", upper.len().to_string().as_bytes())]);
    let mut h = header(
        Flavour::Gnu,
        b'0',
        format!("{prefix}/upper.ext4").as_bytes(),
        0,
        b"",
    );
    seal(&mut h);
    t.bytes.extend_from_slice(&h);
    t.bytes.extend_from_slice(&upper);
    let pad = (512 - t.bytes.len() % 512) % 512;
    t.bytes.extend(vec![0u8; pad]);
    push("handmade-pax-path-and-size", t.finish());

    // A GNU long name for a member.
    let mut t = Tar::new();
    t.long_name(format!("{prefix}/manifest.json").as_bytes());
    t.file("short", &manifest);
    t.file(&format!("{prefix}/upper.ext4"), &upper);
    push("handmade-gnu-long-name", t.finish());
    out
}

/// Our exports of a three-snapshot chain with its image: sparse and dense,
/// zstd and plain tar.
pub fn exports(work: &Path) -> Vec<Archive> {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let mut out = Vec::new();
    for (name, extra) in [
        ("export-zst-sparse", vec![]),
        ("export-zst-dense", vec!["--dense"]),
        ("export-tar-sparse", vec!["--plain-tar"]),
        ("export-tar-dense", vec!["--plain-tar", "--dense"]),
    ] {
        let path = work.join(name);
        let mut args = vec![
            "export",
            "app",
            "-o",
            path.to_str().unwrap(),
            "--with-parents",
            "--with-image",
        ];
        args.extend(extra);
        reg.run(&args).ok();
        out.push(Archive {
            name: name.into(),
            bytes: std::fs::read(&path).unwrap(),
        });
    }
    out
}

/// Files of a directory, by name.
fn files_in(dir: &Path, prefix: &str) -> Vec<Archive> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Archive> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .map(|p| Archive {
            name: format!("{prefix}{}", p.file_name().unwrap().to_string_lossy()),
            bytes: std::fs::read(&p).unwrap(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The fuzz seeds (fuzz/seeds/archive).
pub fn fuzz_seeds() -> Vec<Archive> {
    files_in(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/archive"),
        "seed:",
    )
}

/// microsandbox's archives, when ../shared/fixtures is present.
pub fn fixtures() -> Vec<Archive> {
    crate::util::fixtures()
        .map(|d| files_in(&d, "fixture:"))
        .unwrap_or_default()
}

/// The whole corpus, small enough to read many times over; GNU tar's
/// large sparse archives (2566, 2567, 3000 extents) only when `large`.
pub fn corpus(work: &Path, large: bool) -> Vec<Archive> {
    let mut out = fuzz_seeds();
    out.extend(fixtures());
    out.extend(exports(work));
    for n in [0, 1, 4, 5, 25, 26] {
        out.push(gnu_sparse(work, n));
    }
    if large {
        for n in [2566, 2567, 3000] {
            out.push(gnu_sparse(work, n));
        }
    }
    out.push(smuggling(work).0);
    out.extend(handmade(work));
    out
}

/// The tar stream inside `bytes`: zstd decompressed with the zstd tool.
pub fn plain_tar(bytes: &[u8]) -> Option<Vec<u8>> {
    if !bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Some(bytes.to_vec());
    }
    use std::io::Write;
    let mut child = Command::new("zstd")
        .args(["-dc", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out.status.success().then_some(out.stdout)
}
