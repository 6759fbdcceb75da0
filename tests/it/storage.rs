//! Issue 22, storage robustness: damage to the schema history, indexes
//! from a newer msb-registry or from another program, FIFOs where locks
//! belong, read-only and full storage, interrupted `add`s and failing
//! commands on a root that was not a registry.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

fn sql(reg: &Reg) -> rusqlite::Connection {
    rusqlite::Connection::open(reg.root().join("registry.db")).unwrap()
}

fn names(reg: &Reg) -> Vec<String> {
    let list: Vec<serde_json::Value> = reg.json(&["list"]);
    let mut names: Vec<String> = list
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// A snapshot directory (outside the root) to add, pinning the chain's image.
fn another(reg: &Reg, image: &msb_registry::model::image::ImageMetadata, tag: &str) -> String {
    let dir = reg.path(&format!("src/{tag}"));
    make_snapshot(&dir, &SnapSpec::new(image).label("tag", tag));
    dir.to_str().unwrap().to_string()
}

const REINDEX_HINT: &str = "`msb-registry reindex` moves it aside";

#[test]
fn issue_22_a_damaged_schema_history_is_corruption_that_reindex_repairs() {
    for damage in [
        "UPDATE refinery_schema_history SET applied_on = 'last tuesday' WHERE version = 1",
        "DELETE FROM refinery_schema_history",
        "UPDATE refinery_schema_history SET checksum = '12345' WHERE version = 2",
        "UPDATE refinery_schema_history SET checksum = 'x' WHERE version = 2",
        "DELETE FROM refinery_schema_history WHERE version = 3",
        "DROP TABLE refinery_schema_history",
        "UPDATE refinery_schema_history SET version = 'one' WHERE version = 1",
    ] {
        let reg = Reg::new();
        let (_, image) = chain_in_registry(&reg);
        let rows = crate::crash::rows(&reg);
        sql(&reg).execute_batch(damage).unwrap();
        let files = reg.tree();
        let more = another(&reg, &image, "more");
        for args in [
            &["list"][..],
            &["show", "app"],
            &["sql", "SELECT 1"],
            &["verify"],
            &["gc"],
            &["rm", "app"],
            &["rename", "app", "web"],
            &["add", &more],
        ] {
            let run = reg.run(args).fails(5, REINDEX_HINT);
            assert!(
                run.stderr.contains("refinery_schema_history"),
                "{damage}: {args:?}: {}",
                run.stderr
            );
            assert_eq!(reg.tree(), files, "{damage}: {args:?} changed files");
        }
        reg.run(&["reindex"]).ok();
        assert_eq!(crate::crash::rows(&reg), rows, "{damage}");
        reg.run(&["verify", "--content"]).ok();
        reg.run(&["add", &more, "--name", "more"]).ok();
    }
}

#[test]
fn issue_22_an_index_from_a_newer_msb_registry_says_so_and_still_reads() {
    let reg = Reg::new();
    let (_, image) = chain_in_registry(&reg);
    let conn = sql(&reg);
    conn.execute_batch(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
         VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '42');
         PRAGMA user_version = 2003004;",
    )
    .unwrap();
    drop(conn);
    let before = reg.dump();
    assert_eq!(names(&reg), ["app", "base", "deps"]);
    reg.run(&["show", "app"]).ok();
    reg.run(&["verify", "--content"]).ok();
    reg.run(&["sql", "SELECT count(*) FROM snapshots"]).ok();
    let more = another(&reg, &image, "more");
    for args in [
        &["add", &more][..],
        &["rm", "app"],
        &["rename", "app", "web"],
        &["gc"],
        &["reindex"],
    ] {
        let run = reg.run(args).fails(2, "written by a newer msb-registry");
        assert!(
            run.stderr.contains("msb-registry 2.3.4") && run.stderr.contains("schema V99"),
            "{args:?}: {}",
            run.stderr
        );
    }
    assert_eq!(reg.dump(), before, "a refused writer changed the registry");
}

#[test]
fn issue_22_a_database_that_is_not_ours_is_refused_and_never_migrated() {
    let reg = Reg::new();
    std::fs::create_dir_all(reg.root()).unwrap();
    let db = reg.root().join("registry.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE people (name TEXT); INSERT INTO people VALUES ('ada');")
        .unwrap();
    drop(conn);
    let bytes = std::fs::read(&db).unwrap();
    let cache = reg.path("cache");
    let image = make_image_cache(&cache, "python:3.12", 7, &[4096]);
    let dir = another(&reg, &image, "one");
    for args in [
        &["list"][..],
        &["sql", "SELECT * FROM people"],
        &["verify"],
        &["gc"],
        &["reindex"],
        &["add", &dir],
        &["rm", "x"],
    ] {
        let run = reg.run(args).fails(5, "is not an msb-registry index");
        assert!(run.stderr.contains("people"), "{args:?}: {}", run.stderr);
        let entries: Vec<String> = std::fs::read_dir(reg.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, ["registry.db"], "{args:?} created files");
        assert_eq!(std::fs::read(&db).unwrap(), bytes, "{args:?} wrote to it");
    }
}

#[test]
fn issue_22_an_index_that_is_a_directory_is_a_clear_error() {
    let reg = Reg::new();
    let (_, image) = chain_in_registry(&reg);
    let db = reg.root().join("registry.db");
    std::fs::remove_file(&db).unwrap();
    std::fs::create_dir(&db).unwrap();
    let more = another(&reg, &image, "more");
    for args in [&["list"][..], &["gc"], &["reindex"], &["add", &more]] {
        reg.run(args).fails(5, "is a directory, not a file");
    }
    std::fs::remove_dir(&db).unwrap();
    reg.run(&["reindex"]).ok();
    assert_eq!(names(&reg), ["app", "base", "deps"]);
}

/// A command that has not ended after this long is hung (a guard against
/// hangs, not a speed assertion).
const HUNG: Duration = Duration::from_secs(120);

/// Run the binary on `reg` and fail (rather than hang) when it does not end.
fn bounded(reg: &Reg, args: &[&str]) -> Run {
    let mut child = reg
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > HUNG {
            child.kill().unwrap();
            panic!("{args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Run::from(child.wait_with_output().unwrap())
}

/// An artifact's `.lock` beside it, as microsandbox names it.
fn lock_of(artifact: &Path) -> PathBuf {
    let mut name = artifact.as_os_str().to_os_string();
    name.push(".lock");
    name.into()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "{path:?}");
}

/// Every regular file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path().strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn issue_22_a_fifo_where_a_lock_belongs_never_blocks() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let cache = reg.root().join("cache");
    let artifacts = files_under(&cache);
    assert!(!artifacts.is_empty());
    // An unreferenced artifact whose .lock is a FIFO: gc keeps it.
    let model = artifacts
        .iter()
        .find(|a| {
            a.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("sha256_")
        })
        .unwrap();
    let name = model.file_name().unwrap().to_str().unwrap();
    let orphan =
        cache
            .join(model)
            .with_file_name(format!("sha256_{}{}", "ab".repeat(32), &name[7 + 64..]));
    std::fs::write(&orphan, b"orphan").unwrap();
    for a in &artifacts {
        mkfifo(&lock_of(&cache.join(a)));
    }
    mkfifo(&lock_of(&orphan));
    for args in [
        &["gc", "--dry-run", "--grace", "0"][..],
        &["gc", "--grace", "0"],
        &["reindex"],
        &["verify", "--content"],
    ] {
        let run = bounded(&reg, args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    }
    assert_eq!(
        files_under(&cache).len(),
        artifacts.len() + 1,
        "gc deleted an artifact"
    );
    assert_eq!(names(&reg), ["app", "base", "deps"]);

    // registry.lock itself a FIFO: readers read, writers refuse at once.
    let lock = reg.root().join("registry.lock");
    std::fs::remove_file(&lock).unwrap();
    mkfifo(&lock);
    bounded(&reg, &["list"]).ok();
    for args in [&["gc"][..], &["rm", "app"], &["reindex"]] {
        let run = bounded(&reg, args);
        assert_eq!(run.code, 5, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr
                .contains("registry.lock: is a FIFO, not a regular file"),
            "{args:?}: {}",
            run.stderr
        );
    }
    assert_eq!(names(&reg), ["app", "base", "deps"]);
}

#[test]
fn issue_22_a_bad_lock_timeout_is_refused() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    for value in ["2s", "abc", "-1", "", "1.5", "+3"] {
        for args in [&["list"][..], &["gc"]] {
            reg.run_env(args, &[("MSB_REGISTRY_LOCK_TIMEOUT", value)])
                .fails(2, "MSB_REGISTRY_LOCK_TIMEOUT");
        }
    }
    reg.run_env(&["gc"], &[("MSB_REGISTRY_LOCK_TIMEOUT", "0")])
        .ok();
    reg.run_env(&["list"], &[("MSB_REGISTRY_LOCK_TIMEOUT", "30")])
        .ok();
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

fn staging_entries(reg: &Reg) -> Vec<String> {
    std::fs::read_dir(reg.root().join("staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn issue_22_an_interrupted_add_says_so_and_leaves_no_staging() {
    let reg = Reg::new();
    let (_, image) = chain_in_registry(&reg);
    let before = crate::crash::state(&reg);
    let more = another(&reg, &image, "more");
    for (sig, code, name) in [
        (libc::SIGINT, 130, "SIGINT"),
        (libc::SIGTERM, 143, "SIGTERM"),
    ] {
        let held = reg.held_at(&["add", &more], "add.staged", Hold::Stop);
        assert!(!staging_entries(&reg).is_empty());
        signal(held.child.id(), sig);
        signal(held.child.id(), libc::SIGCONT);
        let Held { child, mut stderr } = held;
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{name}: {rest}");
        assert_eq!(rest.trim_end().lines().count(), 1, "{rest}");
        assert!(
            rest.contains(&format!(
                "interrupted by {name}; removed this add's staging staging/"
            )) && rest.contains("the registry is unchanged"),
            "{rest}"
        );
        assert!(
            staging_entries(&reg).is_empty(),
            "{:?}",
            staging_entries(&reg)
        );
        assert_eq!(crate::crash::state(&reg), before, "{name}");
    }
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn issue_22_a_killed_adds_staging_is_cleared_by_the_next_writer() {
    let reg = Reg::new();
    let (_, image) = chain_in_registry(&reg);
    let more = another(&reg, &image, "more");
    let writers: [&[&str]; 3] = [
        &["rm", "base", "--force"],
        &["rename", "app", "web"],
        &["add", &more],
    ];
    for writer in writers {
        let mut held = reg.held_at(
            &["add", &more, "--name", "killed"],
            "add.staged",
            Hold::Pause,
        );
        held.child.kill().unwrap();
        held.child.wait().unwrap();
        assert!(!staging_entries(&reg).is_empty());
        reg.run(writer).ok();
        assert!(
            staging_entries(&reg).is_empty(),
            "{writer:?} left {:?}",
            staging_entries(&reg)
        );
    }
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn issue_22_a_failing_command_creates_no_registry() {
    let reg = Reg::new();
    let missing = reg.path("no-such.tar.zst");
    let cache = reg.path("cache");
    let image = make_image_cache(&cache, "python:3.12", 7, &[4096]);
    let dir = another(&reg, &image, "one");
    let bad = reg.path("src/bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("manifest.json"), b"{}").unwrap();
    for args in [
        &["rm", "app"][..],
        &["rename", "app", "web"],
        &["import", missing.to_str().unwrap()],
        &["add", bad.to_str().unwrap()],
        &["add", &dir, "--name", "no/slash"],
    ] {
        for existed in [false, true] {
            let typo = reg.path("typo-root");
            if existed {
                std::fs::create_dir(&typo).unwrap();
            }
            let run = Run::from(command_at(&typo, args).output().unwrap());
            assert_ne!(run.code, 0, "{args:?} succeeded");
            if existed {
                let left: Vec<_> = std::fs::read_dir(&typo).unwrap().collect();
                assert!(left.is_empty(), "{args:?} left {left:?}");
                std::fs::remove_dir(&typo).unwrap();
            } else {
                assert!(!typo.exists(), "{args:?} created {}", typo.display());
            }
        }
    }
    // A command that succeeds still creates the registry.
    let root = reg.path("new-root");
    Run::from(command_at(&root, &["add", &dir]).output().unwrap()).ok();
    assert!(root.join("registry.db").is_file());
}

/// The root of `reg` on its own tmpfs, so it can be remounted read-only
/// or filled; `None` (test skipped) without root.
pub(crate) fn on_tmpfs(reg: &Reg, size: &str) -> Option<crate::diskfull::Mount> {
    crate::diskfull::Mount::tmpfs(&reg.root(), size)
}

fn side(reg: &Reg, suffix: &str) -> PathBuf {
    reg.root().join(format!("registry.db{suffix}"))
}

#[test]
fn issue_22_a_read_only_root_reads_every_committed_row_in_every_wal_state() {
    let reg = Reg::new();
    let Some(mount) = on_tmpfs(&reg, "64m") else {
        return;
    };
    let (_, image) = chain_in_registry(&reg);
    let more = another(&reg, &image, "more");
    // A writer killed right after its commit: the row lives in the -wal.
    let mut held = reg.held_at(
        &["add", &more, "--name", "more"],
        "add.installed",
        Hold::Pause,
    );
    held.child.kill().unwrap();
    held.child.wait().unwrap();
    let expect = ["app", "base", "deps", "more"];
    assert!(std::fs::metadata(side(&reg, "-wal")).unwrap().len() > 0);
    let db_bytes = std::fs::read(side(&reg, "")).unwrap();
    let reads: [&[&str]; 4] = [
        &["show", "more"],
        &["sql", "SELECT count(*) FROM snapshots"],
        &["verify"],
        &["lineage", "app"],
    ];
    for state in ["-wal and -shm", "-wal without -shm", "no -wal"] {
        match state {
            "-wal without -shm" => std::fs::remove_file(side(&reg, "-shm")).unwrap(),
            "no -wal" => {
                reg.run(&["gc", "--dry-run"]).ok();
                assert!(!side(&reg, "-wal").exists());
            }
            _ => {}
        }
        let files: Vec<String> = std::fs::read_dir(reg.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        mount.remount(&reg.root(), "remount,ro");
        assert_eq!(names(&reg), expect, "{state}");
        for args in reads {
            reg.run(args).ok();
        }
        reg.run(&["rm", "more"]).fails(7, "Read-only file system");
        mount.remount(&reg.root(), "remount,rw");
        let after: Vec<String> = std::fs::read_dir(reg.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(after, files, "{state}: reads created files");
        if state != "no -wal" {
            assert_eq!(std::fs::read(side(&reg, "")).unwrap(), db_bytes, "{state}");
        }
    }
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn issue_22_an_older_schema_on_a_read_only_root_is_read_not_migrated() {
    let reg = Reg::new();
    let Some(mount) = on_tmpfs(&reg, "64m") else {
        return;
    };
    chain_in_registry(&reg);
    sql(&reg)
        .execute_batch(
            "DROP TABLE signatures; DROP TABLE remote_chunks; DROP TABLE remote_blobs;
             DELETE FROM refinery_schema_history WHERE version >= 6;",
        )
        .unwrap();
    let db_bytes = std::fs::read(side(&reg, "")).unwrap();
    mount.remount(&reg.root(), "remount,ro");
    assert_eq!(names(&reg), ["app", "base", "deps"]);
    reg.run(&["show", "app"]).ok();
    reg.run(&["verify", "--content"]).ok();
    mount.remount(&reg.root(), "remount,rw");
    assert_eq!(std::fs::read(side(&reg, "")).unwrap(), db_bytes);
    // Writable again: the first command migrates it.
    reg.run(&["list"]).ok();
    reg.run(&["sql", "SELECT count(*) FROM remote_blobs"]).ok();
}

/// Fill the file system holding `dir` to the last byte.
pub(crate) fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0x5au8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let small = [0x5au8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn issue_22_on_a_full_disk_reads_work_writes_exit_7_and_gc_frees_space() {
    let reg = Reg::new();
    let Some(_mount) = on_tmpfs(&reg, "48m") else {
        return;
    };
    let (_, image) = chain_in_registry(&reg);
    let archive = reg.path("app.tar.zst");
    reg.run(&[
        "export",
        "app",
        "--with-parents",
        "-o",
        archive.to_str().unwrap(),
    ])
    .ok();
    let more = another(&reg, &image, "more");
    reg.run(&["rm", "app", "deps"]).ok();
    let cache_files = files_under(&reg.root().join("cache")).len();
    assert!(
        !side(&reg, "-shm").exists(),
        "the last writer removed the -shm"
    );
    fill(&reg.root());

    assert_eq!(names(&reg), ["base"]);
    reg.run(&["show", "base"]).ok();
    reg.run(&["verify", "--content"]).ok();
    reg.run(&["sql", "SELECT name FROM snapshots"]).ok();
    // Through the binary: the sqlite3 shell cannot read on a full disk.
    let rows = || {
        let q = "SELECT * FROM snapshots; SELECT * FROM snapshot_files; SELECT * FROM cache_files";
        let mut out = String::new();
        for one in q.split("; ") {
            out += &reg.run(&["sql", one]).ok().stdout;
        }
        out
    };
    let before = rows();
    for args in [
        &["add", &more, "--name", "more"][..],
        &["import", archive.to_str().unwrap()],
        &["rename", "base", "root"],
        &["rm", "base"],
    ] {
        let run = reg.run(args);
        assert_eq!(run.code, 7, "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
        assert_eq!(rows(), before, "{args:?}");
    }
    assert!(staging_entries(&reg).is_empty());
    // The last snapshot removed while there was room, the disk full again:
    // gc still deletes the image it pinned.
    std::fs::remove_file(reg.root().join("filler")).unwrap();
    reg.run(&["rm", "base"]).ok();
    fill(&reg.root());
    assert!(!side(&reg, "-shm").exists());
    assert!(cache_files > 0);
    reg.run(&["gc"]).ok();
    assert!(files_under(&reg.root().join("cache")).is_empty());
    reg.run(&["verify", "--content"]).ok();
    assert_eq!(names(&reg), Vec::<String>::new());
}
