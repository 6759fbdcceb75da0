//! Issue 25: hashing on several threads changes nothing but the time. The
//! same archive and directories give the same digests, the same refusals
//! and the same clean-up with `--threads 1` (everything inline) and
//! `--threads 4` (each upper's integrity hash on its own thread, files of
//! many snapshots at once); a bad thread count is a usage error.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use msb_registry::model::digest::{Digest, LogicalSink, PlainSha256};
use msb_registry::model::manifest::{Format, ImagePin, Integrity, Manifest, Upper};

use crate::tarcraft::Tar;
use crate::util::*;

const THREADS: [&str; 2] = ["1", "4"];

/// Every snapshot file's path, size and digest, and each snapshot's name.
fn contents(reg: &Reg) -> Vec<serde_json::Value> {
    reg.json(&[
        "sql",
        "SELECT s.name, f.path, f.size, f.digest FROM snapshot_files f \
         JOIN snapshots s ON s.digest = f.snapshot ORDER BY s.name, f.path",
    ])
}

/// [`contents`] without the snapshots' names, in a stable order.
fn unnamed(mut rows: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    for r in &mut rows {
        r.as_object_mut().unwrap().remove("name");
    }
    rows.sort_by_key(|r| r.to_string());
    rows
}

fn staging_entries(reg: &Reg) -> Vec<String> {
    match std::fs::read_dir(reg.root().join("staging")) {
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn one_and_four_threads_import_add_and_verify_alike() {
    let src = Reg::new();
    let (digests, _) = chain_in_registry(&src);
    let archive = src.export_chain("app", "chain.tar.zst", &["--with-image"]);
    // microsandbox writes dense uppers: their zeros arrive as data.
    let dense = src.export_chain("app", "dense.tar.zst", &["--with-image", "--dense"]);
    let expected = contents(&src);
    assert_eq!(expected.len(), 6, "{expected:?}");
    for threads in THREADS {
        let reg = Reg::new();
        reg.run(&["--threads", threads, "import", dense.to_str().unwrap()])
            .ok();
        // A dense archive carries no names: the same files, by digest.
        assert_eq!(
            unnamed(contents(&reg)),
            unnamed(expected.clone()),
            "dense import --threads {threads}"
        );
        let reg = Reg::new();
        reg.run(&["--threads", threads, "import", archive.to_str().unwrap()])
            .ok();
        assert_eq!(contents(&reg), expected, "import --threads {threads}");
        let out = reg.run(&["--threads", threads, "verify", "--content", "--json"]);
        let report: serde_json::Value = out.ok().json();
        assert_eq!(report["problems"], serde_json::json!([]), "{report}");

        let added = Reg::new();
        for name in ["base", "deps", "app"] {
            let dir = src.path(&format!("src/{name}"));
            added
                .run_env(
                    &["add", dir.to_str().unwrap(), "--name", name],
                    &[("MSB_REGISTRY_THREADS", threads)],
                )
                .ok();
        }
        assert_eq!(contents(&added), expected, "add with {threads} threads");
    }
    assert_eq!(digests.len(), 3);
}

#[test]
fn verify_finds_the_same_damage_with_one_and_four_threads() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let upper = reg.root().join("snapshots/deps/upper.ext4");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&upper)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"X", 4096).unwrap();
    let mut reports = Vec::new();
    for threads in THREADS {
        let out = reg.run(&["--threads", threads, "verify", "--content", "--json"]);
        assert_ne!(out.code, 0, "{}", out.stderr);
        let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let problems = report["problems"].clone();
        assert!(problems.to_string().contains("integrity is"), "{problems}");
        reports.push((out.code, problems));
    }
    assert_eq!(reports[0], reports[1]);
}

/// A one-snapshot archive: the manifest of an upper of `len` logical bytes
/// recording `integrity`, and the upper's first 4 KiB of data as a sparse member.
fn sparse_archive(len: u64, integrity: Integrity, data: &[u8]) -> (Vec<u8>, Digest) {
    let mut t = Tar::new();
    let d = sparse_snapshot(&mut t, None, len, integrity, &[(0, data.to_vec())]);
    (t.finish(), d)
}

/// Add a snapshot to `t`: its manifest (child of `parent`) recording an
/// upper of `len` logical bytes with `integrity`, and the upper holding
/// `extents` as a sparse member. Its digest.
fn sparse_snapshot(
    t: &mut Tar,
    parent: Option<Digest>,
    len: u64,
    integrity: Integrity,
    extents: &[(u64, Vec<u8>)],
) -> Digest {
    let manifest = Manifest {
        schema: 1,
        format: Format::Raw,
        fstype: "ext4".into(),
        image: ImagePin {
            reference: "python:3.12".into(),
            manifest_digest: Digest::of(b"an image this registry does not cache"),
        },
        parent,
        created_at: "2026-10-01T09:00:00Z".into(),
        labels: Default::default(),
        upper: Upper {
            file: "upper.ext4".into(),
            size_bytes: len,
            integrity: Some(integrity),
        },
        source_sandbox: None,
    };
    let d = manifest.digest();
    let prefix = d.archive_prefix();
    t.file(
        &format!("{prefix}/manifest.json"),
        &manifest.canonical_bytes(),
    );
    t.sparse(&format!("{prefix}/upper.ext4"), len, extents);
    d
}

/// `sha256` integrity of an upper of `len` bytes holding `data` at 0,
/// hashed without holding the zeros in memory.
fn sha256_streamed(len: u64, data: &[u8]) -> Integrity {
    let mut h = PlainSha256::default();
    h.data(data);
    h.zeros(len - data.len() as u64);
    Integrity {
        algorithm: "sha256".into(),
        digest: h.finish().to_string(),
    }
}

/// A `sha256` integrity no upper hashes to: the hash of an import
/// interrupted mid-way never gets to compare it.
fn never_reached() -> Integrity {
    Integrity {
        algorithm: "sha256".into(),
        digest: Digest::of(b"never reached").to_string(),
    }
}

fn sha256_of_sparse(len: u64, data: &[u8]) -> String {
    let mut logical = vec![0u8; len as usize];
    logical[..data.len()].copy_from_slice(data);
    Digest::of(&logical).to_string()
}

#[test]
fn a_corrupt_or_truncated_upper_is_refused_alike_and_leaves_nothing() {
    let data = vec![0x5a; 4096];
    let len = 24 << 20;
    let good = Integrity {
        algorithm: "sha256".into(),
        digest: sha256_of_sparse(len, &data),
    };
    let (archive, digest) = sparse_archive(len, good.clone(), &data);
    let mut corrupt = data.clone();
    corrupt[7] ^= 1;
    let (bad, _) = sparse_archive(len, good, &corrupt);
    for threads in THREADS {
        let reg = Reg::new();
        chain_in_registry(&reg);
        let before = (reg.tree(), contents(&reg));
        let path = reg.path("bad.tar");
        std::fs::write(&path, &bad).unwrap();
        reg.run(&["--threads", threads, "import", path.to_str().unwrap()])
            .fails(5, "upper.ext4: sha256 integrity is sha256:");
        let cut = reg.path("cut.tar");
        std::fs::write(&cut, &archive[..archive.len() - 2048 - 1024]).unwrap();
        reg.run(&["--threads", threads, "import", cut.to_str().unwrap()])
            .fails(6, "truncated");
        assert_eq!((reg.tree(), contents(&reg)), before, "--threads {threads}");
        assert_eq!(staging_entries(&reg), Vec::<String>::new());

        let path = reg.path("good.tar");
        std::fs::write(&path, &archive).unwrap();
        reg.run(&["--threads", threads, "import", path.to_str().unwrap()])
            .ok();
        let shown: serde_json::Value = reg.json(&["show", &digest.to_string()]);
        assert_eq!(shown["digest"], digest.to_string(), "{shown}");
    }
}

#[test]
fn ctrl_c_while_an_upper_is_hashed_exits_130_and_leaves_nothing() {
    // 6 GiB of holes take SHA-256 seconds: the signal lands mid-hash.
    let len = 6 << 30;
    let (archive, _) = sparse_archive(len, never_reached(), &[0x5a; 4096]);
    for threads in ["2", "4"] {
        import_interrupted_mid_hash(&archive, threads);
    }
}

#[test]
fn ctrl_c_while_one_thread_hashes_a_huge_hole_exits_130_promptly() {
    // With one thread the hole is hashed inline, on the thread that reads
    // the archive: 64 GiB of zeros take SHA-256 a minute or more, and the
    // interrupt must not wait for them.
    let len = 64 << 30;
    let (archive, _) = sparse_archive(len, never_reached(), &[0x5a; 4096]);
    let started = std::time::Instant::now();
    import_interrupted_mid_hash(&archive, "1");
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(20),
        "the interrupted import took {took:?}"
    );
}

/// Import `archive` with `--threads threads`, SIGINT it once its upper is
/// staged (the hash still running): it exits 130 and leaves the registry
/// as it was.
fn import_interrupted_mid_hash(archive: &[u8], threads: &str) {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let before = (reg.tree(), contents(&reg));
    let path = reg.path("big.tar");
    std::fs::write(&path, archive).unwrap();
    let mut child = reg
        .command(&["--threads", threads, "import", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_staged_upper(&reg.root());
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    assert_eq!(staging_entries(&reg), Vec::<String>::new());
    assert_eq!((reg.tree(), contents(&reg)), before, "--threads {threads}");
}

#[test]
fn a_chain_whose_second_upper_hashes_wrong_is_refused_naming_it() {
    // The first upper (1 GiB, right) still hashes when the second (16 MiB,
    // one byte changed after its integrity was taken) is staged and hashed.
    let first_len = 1 << 30;
    let data = vec![0x5a; 4096];
    let mut t = Tar::new();
    let base = sparse_snapshot(
        &mut t,
        None,
        first_len,
        sha256_streamed(first_len, &data),
        &[(0, data.clone())],
    );
    let second_len = 16 << 20;
    let mut corrupt = data.clone();
    corrupt[7] ^= 1;
    let child = sparse_snapshot(
        &mut t,
        Some(base),
        second_len,
        sha256_streamed(second_len, &data),
        &[(0, corrupt)],
    );
    let archive = t.finish();
    let named = format!(
        "{}/upper.ext4: sha256 integrity is sha256:",
        child.archive_prefix()
    );
    for threads in THREADS {
        let reg = Reg::new();
        chain_in_registry(&reg);
        let before = (reg.tree(), contents(&reg));
        let path = reg.path("chain.tar");
        std::fs::write(&path, &archive).unwrap();
        let out = reg
            .run(&["--threads", threads, "import", path.to_str().unwrap()])
            .fails(5, &named);
        assert!(
            !out.stderr.contains(&base.archive_prefix()),
            "{}",
            out.stderr
        );
        assert_eq!((reg.tree(), contents(&reg)), before, "--threads {threads}");
        assert_eq!(staging_entries(&reg), Vec::<String>::new());
    }
}

#[test]
fn ctrl_c_while_a_hash_follows_a_half_written_upper_exits_130_and_leaves_nothing() {
    // The archive arrives on a pipe that stops inside the upper's last
    // extent and stays open: the upper is half written, its hash follows
    // it (through the 512 MiB hole, then waiting for more) when SIGINT lands.
    let len = 1 << 30;
    let mut t = Tar::new();
    sparse_snapshot(
        &mut t,
        None,
        len,
        never_reached(),
        &[(0, vec![0x5a; 4096]), (512 << 20, vec![0xa5; 1 << 20])],
    );
    let archive = t.finish();
    let half = &archive[..archive.len() - 1024 - (512 << 10)];
    for threads in THREADS {
        let reg = Reg::new();
        chain_in_registry(&reg);
        let before = (reg.tree(), contents(&reg));
        let mut child = reg
            .command(&["--threads", threads, "import", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(half).unwrap();
        stdin.flush().unwrap();
        wait_for_staged_upper(&reg.root());
        // SAFETY: kill(2) on a child this test spawned and has not reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        let status = child.wait().unwrap();
        drop(stdin);
        assert_eq!(status.code(), Some(130), "{err}");
        assert!(err.contains("interrupted by SIGINT"), "{err}");
        assert_eq!(staging_entries(&reg), Vec::<String>::new());
        assert_eq!((reg.tree(), contents(&reg)), before, "--threads {threads}");
    }
}

/// Wait until an import has staged an upper (its data is written; its
/// hash runs on).
fn wait_for_staged_upper(root: &Path) {
    for _ in 0..2000 {
        let found = walk_files(&root.join("staging"))
            .iter()
            .any(|p| p.ends_with("upper.ext4"));
        if found {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no upper was staged");
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_bad_thread_count_is_a_usage_error() {
    let reg = Reg::new();
    for bad in ["0", "many", "100000"] {
        reg.run(&["--threads", bad, "list"]).fails(2, "--threads");
        reg.run_env(&["list"], &[("MSB_REGISTRY_THREADS", bad)])
            .fails(2, "--threads");
    }
    reg.run_env(&["completions", "bash"], &[("MSB_REGISTRY_THREADS", "3")])
        .ok();
}

/// The most hash slots held at once according to the timeline marks in
/// `stderr` (made in the order the slots changed hands), and how many
/// times a hash waited for one.
fn slots_at_once(stderr: &str) -> (usize, usize) {
    let (mut held, mut most, mut waits) = (0usize, 0usize, 0usize);
    for line in stderr.lines().filter(|l| l.starts_with("timeline ")) {
        if line.ends_with("hash slot: take") {
            held += 1;
            most = most.max(held);
        } else if line.ends_with("hash slot: give") {
            held = held.checked_sub(1).expect("a slot given back was taken");
        } else if line.ends_with("hash slot: wait") {
            waits += 1;
        }
    }
    assert_eq!(held, 0, "every slot taken is given back:\n{stderr}");
    (most, waits)
}

#[test]
fn no_more_than_threads_uppers_hash_at_once_in_add_verify_and_import() {
    // Four uppers of 160 MiB (mostly holes, hashed as zeros) hashed on
    // threads of their own, more of them than the two threads allowed:
    // they wait for the hash slots and take turns after every slice.
    let src = Reg::new();
    let cache = src.path("src-cache");
    let image = make_image_cache(&cache, "python:3.12", 7, &[32768, 16384]);
    let mut dirs = Vec::new();
    let mut parent = None;
    for i in 0..4u8 {
        let mut spec = SnapSpec::new(&image).label("stage", &i.to_string());
        spec.len = 160 << 20;
        spec.data.push((64 << 20, vec![i + 1; 4096]));
        if let Some(p) = parent {
            spec = spec.parent(p);
        }
        let dir = src.path(&format!("src/{i}"));
        parent = Some(make_snapshot(&dir, &spec));
        dirs.push(dir);
    }
    let timeline = [("MSB_REGISTRY_TIMELINE", "1")];
    let within_two = |what: &str, run: Run| {
        let (most, waits) = slots_at_once(&run.stderr);
        assert!(most <= 2, "{what}: {most} hashes at once with --threads 2");
        assert!(waits >= 1, "{what}: no hash waited for a slot");
    };

    let mut add = vec!["--threads", "2", "add"];
    add.extend(dirs.iter().rev().map(|d| d.to_str().unwrap()));
    add.extend(["--cache-dir", cache.to_str().unwrap()]);
    within_two("add", src.run_env(&add, &timeline).ok());
    within_two(
        "verify --content",
        src.run_env(&["--threads", "2", "verify", "--content"], &timeline)
            .ok(),
    );

    let head = parent.unwrap().to_string();
    let archive = src.export_chain(&head, "chain.tar.zst", &[]);
    let reg = Reg::new();
    chain_in_registry(&reg);
    within_two(
        "import",
        reg.run_env(
            &["--threads", "2", "import", archive.to_str().unwrap()],
            &timeline,
        )
        .ok(),
    );
    reg.run(&["verify"]).ok();
}
