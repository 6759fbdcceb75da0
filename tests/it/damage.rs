//! Issue 17: an authoritative index must be hard to lose. Registries
//! damaged by hand (rusqlite, rm, truncate, stray entries) and commands
//! raced against each other (failpoints that stop a process, a helper
//! holding the registry lock or an SQLite write transaction): no data is
//! lost, nothing panics or hangs, and every refusal says what to do.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use msb_registry::model::digest::Digest;
use msb_registry::model::manifest::Manifest;

use crate::diskfull::Mount;
use crate::util::*;

/// A command that has not ended after this long is hung (a guard against
/// hangs, not a speed assertion).
const HUNG: Duration = Duration::from_secs(120);

/// Run the binary on `reg`, in its scratch directory (relative paths land
/// there), and fail (rather than hang) when it does not end.
fn bounded(reg: &Reg, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = reg.command(args);
    cmd.current_dir(reg.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > HUNG {
            child.kill().unwrap();
            panic!("{args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Run::from(child.wait_with_output().unwrap())
}

/// A process stopped (SIGSTOP) at a failpoint, resumed by [`Stopped::resume`].
struct Stopped {
    child: Child,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Stopped {
    fn at(reg: &Reg, args: &[&str], failpoint: &str) -> Stopped {
        let Held { child, stderr } = reg.held_at(args, failpoint, Hold::Stop);
        Stopped { child, stderr }
    }

    /// SIGCONT, then the exit code and the rest of stderr.
    fn resume(mut self) -> (i32, String) {
        let status = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        (code, rest)
    }
}

/// The index, opened as the registry opens it (foreign keys on).
fn sql(reg: &Reg) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(reg.root().join("registry.db")).unwrap();
    conn.pragma_update(None, "foreign_keys", true).unwrap();
    conn
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

/// Every directory under `snapshots/` holding a valid manifest, with the
/// digest and the apparent size of every file in it.
fn manifest_dirs(root: &Path) -> BTreeMap<String, (Digest, BTreeMap<String, u64>)> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(root.join("snapshots")) else {
        return out;
    };
    for e in entries {
        let dir = e.unwrap().path();
        let Ok(bytes) = std::fs::read(dir.join("manifest.json")) else {
            continue;
        };
        let Ok(parsed) = Manifest::parse(&bytes) else {
            continue;
        };
        let files = std::fs::read_dir(&dir)
            .unwrap()
            .map(|f| f.unwrap())
            .filter(|f| f.file_type().unwrap().is_file())
            .map(|f| {
                (
                    f.file_name().into_string().unwrap(),
                    f.metadata().unwrap().len(),
                )
            })
            .collect();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        out.insert(name, (parsed.digest, files));
    }
    out
}

/// Every file under `cache/` with its size.
fn cache_files(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for kind in ["manifests", "layers", "fsmeta", "vmdk"] {
        for e in std::fs::read_dir(root.join("cache").join(kind)).unwrap() {
            let e = e.unwrap();
            let name = format!("{kind}/{}", e.file_name().to_string_lossy());
            out.insert(name, e.metadata().unwrap().len());
        }
    }
    out
}

const HINT: &str = "run `msb-registry reindex`";

#[test]
fn issue_17_a_stray_entry_costs_no_snapshot_its_row_or_its_directory() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let deps = reg.root().join("snapshots/deps");
    std::fs::create_dir(deps.join("stray")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", deps.join("link")).unwrap();
    let before = manifest_dirs(&reg.root());

    let r: serde_json::Value = reg.json(&["reindex"]);
    assert!(
        r["dropped"].as_array().unwrap().is_empty(),
        "reindex dropped an intact snapshot: {r}"
    );
    let skipped: Vec<&str> = r["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(skipped, ["snapshots/deps/link", "snapshots/deps/stray"]);
    assert!(deps.join("stray").is_dir(), "reindex leaves extras alone");
    assert_eq!(names(&reg), ["app", "base", "deps"]);

    reg.run(&["gc", "--grace", "0"]).ok();
    assert_eq!(manifest_dirs(&reg.root()), before, "gc deleted a snapshot");
    assert!(!deps.join("stray").exists() && !deps.join("link").exists());
    assert!(Path::new("/etc/passwd").exists());
    let lineage: Vec<serde_json::Value> = reg.json(&["lineage", "app"]);
    assert_eq!(lineage.len(), 3, "app's chain is whole: {lineage:?}");
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn issue_17_a_snapshot_directory_without_a_row_is_unindexed_not_debris() {
    let reg = Reg::new();
    let (_, image) = chain_in_registry(&reg);
    let orphan = reg.root().join("snapshots/orphan");
    let digest = make_snapshot(&orphan, &SnapSpec::new(&image).label("orphan", "yes"));

    let v = reg.run(&["verify"]);
    assert_eq!(v.code, 5, "{}{}", v.stdout, v.stderr);
    assert!(
        v.stdout.contains("unindexed: snapshots/orphan")
            && v.stdout.contains("reindex")
            && !v.stdout.contains("debris: snapshots/orphan"),
        "{}",
        v.stdout
    );

    let gc = reg.run(&["gc", "--grace", "0"]).ok();
    assert!(
        gc.stdout.contains("kept snapshots/orphan")
            && gc.stdout.contains(&digest.to_string())
            && gc.stdout.contains("reindex"),
        "{}",
        gc.stdout
    );
    let dry: serde_json::Value = reg.json(&["gc", "--dry-run", "--grace", "0"]);
    assert_eq!(dry["kept"][0]["reason"], "unindexed");
    assert!(orphan.join("upper.ext4").exists() && orphan.join("manifest.json").exists());

    let r: serde_json::Value = reg.json(&["reindex"]);
    assert_eq!(r["adopted_snapshots"][0], digest.to_string());
    assert_eq!(names(&reg), ["app", "base", "deps", "orphan"]);
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn issue_17_young_debris_waits_for_the_grace_period_even_with_a_future_mtime() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let layers = reg.root().join("cache/layers");
    let set_mtime = |path: &Path, t: SystemTime| {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    };
    let day = Duration::from_secs(24 * 3600);
    // Debris must be named like an artifact: other names are never gc's to remove.
    let debris = |c: char| format!("sha256_{}.erofs", c.to_string().repeat(64));
    let (old, fresh, future) = (
        layers.join(debris('a')),
        layers.join(debris('b')),
        layers.join(debris('c')),
    );
    for p in [&old, &fresh, &future] {
        std::fs::write(p, b"x").unwrap();
    }
    set_mtime(&old, SystemTime::now() - 2 * day);
    set_mtime(&future, SystemTime::now() + 365 * day);

    let r: serde_json::Value = reg.json(&["gc"]);
    let removed: Vec<&str> = r["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["path"].as_str().unwrap())
        .collect();
    assert_eq!(removed, [format!("cache/layers/{}", debris('a'))]);
    let young: Vec<&str> = r["kept"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["reason"] == "young")
        .map(|k| k["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        young,
        [
            format!("cache/layers/{}", debris('b')),
            format!("cache/layers/{}", debris('c'))
        ]
    );
    assert!(fresh.exists() && future.exists());

    // A clock-skewed mtime does not make debris immortal: its age is taken
    // from the change time this machine set.
    std::thread::sleep(Duration::from_millis(2100));
    reg.run(&["gc", "--grace", "1"]).ok();
    assert!(!fresh.exists() && !future.exists());
    reg.run(&["verify", "--content"]).ok();
}

/// Damage that loses the index: each leaves a registry whose artifacts
/// are all on disk but whose index is gone or unusable.
fn lose_index(reg: &Reg, how: &str) {
    let db = reg.root().join("registry.db");
    match how {
        "deleted" => std::fs::remove_file(&db).unwrap(),
        "truncated" => std::fs::File::create(&db).map(drop).unwrap(),
        "malformed" => {
            let mut bytes = std::fs::read(&db).unwrap();
            assert!(bytes.len() > 5 * 4096, "{} bytes", bytes.len());
            bytes[2 * 4096..4 * 4096].fill(0xff);
            std::fs::write(&db, bytes).unwrap();
        }
        "not-a-database" => std::fs::write(&db, vec![b'x'; 8192]).unwrap(),
        other => panic!("{other}"),
    }
}

#[test]
fn issue_17_a_lost_or_corrupt_index_is_an_error_until_reindex_rebuilds_it() {
    let src = Reg::new();
    let (_, image) = chain_in_registry(&src);
    let other = src.path("src/other");
    make_snapshot(&other, &SnapSpec::new(&image).label("other", "yes"));
    for how in ["deleted", "truncated", "malformed", "not-a-database"] {
        let reg = Reg::new();
        chain_in_registry(&reg);
        let rows = crate::crash::rows(&reg);
        let archive = reg.path("app.tar.zst");
        let out = archive.to_str().unwrap();
        reg.run(&["export", "app", "-o", out]).ok();
        let files = reg.tree();
        lose_index(&reg, how);
        let damaged = std::fs::read(reg.root().join("registry.db")).ok();

        let expect = match how {
            "deleted" | "truncated" => HINT,
            _ => "is corrupt (`msb-registry reindex` moves it aside",
        };
        let other_s = other.to_str().unwrap();
        for args in [
            &["list"][..],
            &["show", "app"],
            &["lineage", "app"],
            &["lineage", "base", "--descendants"],
            &["sql", "SELECT name FROM snapshots"],
            &["verify"],
            &["gc"],
            &["gc", "--dry-run", "--grace", "0"],
            &["export", "app", "-o", reg.path("x.tar").to_str().unwrap()],
            &["rm", "app"],
            &["import", out],
            &["add", other_s, "--name", "other"],
        ] {
            let run = bounded(&reg, args, &[]);
            assert_eq!(
                (run.code, run.stderr.contains(expect)),
                (5, true),
                "{how}: {args:?}: {}",
                run.stderr
            );
            assert_eq!(reg.tree(), files, "{how}: {args:?} changed files");
        }
        assert!(!reg.path("x.tar").exists());

        let r = reg.run(&["reindex", "--json"]).ok();
        let report: serde_json::Value = r.json();
        assert_eq!(report["adopted_snapshots"].as_array().unwrap().len(), 3);
        if let Some(damaged) = damaged.filter(|d| !d.is_empty()) {
            assert!(r.stderr.contains("moved what was left of the index aside"));
            let aside: Vec<PathBuf> = std::fs::read_dir(reg.root())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy().into_owned();
                    n.starts_with("registry.db.corrupt-")
                        && !n.ends_with("-wal")
                        && !n.ends_with("-shm")
                })
                .collect();
            assert_eq!(aside.len(), 1, "{how}: {aside:?}");
            assert_eq!(
                std::fs::read(&aside[0]).unwrap(),
                damaged,
                "{how}: not kept as it was"
            );
        }
        // Names, parents, labels and images all come back.
        assert_eq!(crate::crash::rows(&reg), rows, "{how}");
        reg.run(&["verify", "--content"]).ok();
        let again = reg.path("again.tar.zst");
        reg.run(&["export", "app", "-o", again.to_str().unwrap()])
            .ok();
        assert_eq!(
            std::fs::read(&again).unwrap(),
            std::fs::read(&archive).unwrap()
        );
    }
}

#[test]
fn issue_17_sql_reports_a_corrupt_index_as_corruption() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    lose_index(&reg, "malformed");
    let run = reg
        .run(&["sql", "SELECT * FROM snapshot_files"])
        .fails(5, "registry database is corrupt");
    assert!(!run.stderr.contains("invalid query"), "{}", run.stderr);
    reg.run(&["reindex"]).ok();
    reg.run(&["sql", "SELECT * FROM snapshot_files"]).ok();
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn issue_17_outputs_inside_the_root_are_refused_before_anything_is_written() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let root = reg.root();
    let link = reg.path("into-root");
    std::os::unix::fs::symlink(root.join("snapshots"), &link).unwrap();
    let before = (reg.tree(), reg.dump());
    let upper = std::fs::read(root.join("snapshots/app/upper.ext4")).unwrap();
    for out in [
        root.join("snapshots/app/upper.ext4"),
        root.join("registry.db"),
        root.join("new.tar.zst"),
        root.join("cache/layers/x.tar"),
        link.join("app/manifest.json"),
        link.join("fresh.tar"),
    ] {
        reg.run(&[
            "export",
            "app",
            "--with-parents",
            "-o",
            out.to_str().unwrap(),
        ])
        .fails(2, "is inside the registry root");
        assert_eq!((reg.tree(), reg.dump()), before, "{}", out.display());
    }
    assert_eq!(
        std::fs::read(root.join("snapshots/app/upper.ext4")).unwrap(),
        upper
    );
    let relative = bounded(&reg, &["export", "app", "-o", "registry.db"], &[]);
    assert_eq!(
        relative.code, 0,
        "outside the root is fine: {}",
        relative.stderr
    );
    assert!(reg.path("registry.db").is_file());
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn issue_17_damaged_rows_are_errors_that_verify_names_and_reindex_repairs() {
    let reg = Reg::new();
    let (digests, _) = chain_in_registry(&reg);
    let db = sql(&reg);
    db.execute(
        "UPDATE cache_files SET path = 'layers/../../etc/passwd' WHERE path LIKE 'vmdk/%'",
        [],
    )
    .unwrap();
    db.execute("UPDATE images SET metadata_file = 'not a file name'", [])
        .unwrap();
    drop(db);
    let v = reg.run(&["verify", "--content"]);
    assert_eq!(v.code, 5, "{}{}", v.stdout, v.stderr);
    assert!(
        v.stdout
            .contains("bad-row: cache_files/layers/../../etc/passwd")
            && v.stdout.contains("bad-row: images/"),
        "{}",
        v.stdout
    );
    let out = reg.path("x.tar.zst");
    reg.run(&["export", "app", "--with-image", "-o", out.to_str().unwrap()])
        .fails(5, "not a cache file name");
    let r: serde_json::Value = reg.json(&["reindex"]);
    assert!(r["adopted_images"].as_array().unwrap().len() == 1, "{r}");
    reg.run(&["export", "app", "--with-image", "-o", out.to_str().unwrap()])
        .ok();
    reg.run(&["verify", "--content"]).ok();

    // A parent cycle: one UPDATE. Bounded walks report it as corruption.
    let db = sql(&reg);
    db.execute(
        "UPDATE snapshots SET parent = ?1 WHERE digest = ?2",
        [digests[2].to_string(), digests[0].to_string()],
    )
    .unwrap();
    drop(db);
    for args in [
        &["lineage", "app"][..],
        &["lineage", "base", "--descendants"],
        &["lineage", "deps", "--descendants"],
        &[
            "export",
            "app",
            "--with-parents",
            "-o",
            out.to_str().unwrap(),
        ],
    ] {
        let run = bounded(&reg, args, &[]);
        assert_eq!(run.code, 5, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains("loop back") && run.stderr.contains("reindex"));
        assert!(run.stdout.len() < 4096, "{args:?} printed the loop");
    }
    reg.run(&["reindex"]).ok();
    let lineage: Vec<serde_json::Value> = reg.json(&["lineage", "app"]);
    assert_eq!(lineage.len(), 3);
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn issue_17_rows_that_cannot_be_decoded_are_corruption_and_reindex_rebuilds() {
    for damage in [
        "UPDATE snapshots SET labels = 'not json' WHERE name = 'deps'",
        "UPDATE snapshots SET parent = 'sha256:zz' WHERE name = 'app'",
        "UPDATE snapshot_files SET size = -3",
        "UPDATE images SET config_digest = 5",
        "INSERT INTO pending_removals VALUES ('sha256:' || hex(randomblob(32)), 'x', 0)",
    ] {
        let reg = Reg::new();
        chain_in_registry(&reg);
        let rows = crate::crash::rows(&reg);
        sql(&reg).execute(damage, []).unwrap();
        let mut failed = 0;
        for args in [
            &["list"][..],
            &["show", "app"],
            &["verify", "--content"],
            &["gc", "--dry-run"],
        ] {
            let run = bounded(&reg, args, &[]);
            assert!(
                run.code == 0 || run.code == 5,
                "{damage}: {args:?}: {}",
                run.stderr
            );
            if run.code == 5 && run.stderr.contains("error: registry database") {
                assert!(
                    run.stderr.contains(HINT.trim_start_matches("run ")),
                    "{}",
                    run.stderr
                );
                failed += 1;
            }
        }
        assert!(failed > 0, "{damage}: no command noticed");
        bounded(&reg, &["reindex"], &[]).ok();
        assert_eq!(crate::crash::rows(&reg), rows, "{damage}");
        reg.run(&["verify", "--content"]).ok();
    }
}

#[test]
fn issue_17_add_racing_an_rm_of_its_snapshot_is_not_a_panic() {
    let reg = Reg::new();
    let (_, image) = chain_in_registry(&reg);
    let src = reg.path("src/racy");
    make_snapshot(&src, &SnapSpec::new(&image).label("racy", "yes"));
    let add = Stopped::at(
        &reg,
        &["add", src.to_str().unwrap(), "--name", "racy"],
        "add.installed",
    );
    bounded(&reg, &["rm", "racy"], &[]).ok();
    let (code, stderr) = add.resume();
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("removed by another command right after it was added"));
    assert_eq!(names(&reg), ["app", "base", "deps"]);
    reg.run(&["gc", "--grace", "0"]).ok();
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn issue_17_export_racing_rm_is_not_found_not_an_integrity_failure() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let out = reg.path("app.tar.zst");
    let export = Stopped::at(
        &reg,
        &[
            "export",
            "app",
            "--with-parents",
            "-o",
            out.to_str().unwrap(),
        ],
        "export.planned",
    );
    bounded(&reg, &["rm", "app"], &[]).ok();
    let (code, stderr) = export.resume();
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("removed while exporting"), "{stderr}");
    assert!(!out.exists());
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn issue_17_readers_do_not_wait_for_writers_and_writers_say_they_wait() {
    let reg = Reg::new();
    let (_, image) = chain_in_registry(&reg);
    let out = reg.path("a.tar.zst");
    let out_s = out.to_str().unwrap();
    let reads: [&[&str]; 7] = [
        &["list"],
        &["show", "app"],
        &["lineage", "app"],
        &["lineage", "base", "--descendants"],
        &["sql", "SELECT count(*) FROM snapshots"],
        &["verify", "--content"],
        &[
            "export",
            "app",
            "--with-parents",
            "--with-image",
            "-o",
            out_s,
        ],
    ];
    // A gc holding the registry lock for as long as it likes.
    let gc = Stopped::at(&reg, &["gc", "--grace", "0"], "gc.planned");
    for args in reads {
        bounded(&reg, args, &[]).ok();
    }
    let rm = bounded(&reg, &["rm", "app"], &[("MSB_REGISTRY_LOCK_TIMEOUT", "2")]);
    assert_eq!(rm.code, 4, "{}", rm.stderr);
    assert!(
        rm.stderr.contains("waiting for") && rm.stderr.contains("still held by another"),
        "{}",
        rm.stderr
    );
    let (code, stderr) = gc.resume();
    assert_eq!(code, 0, "{stderr}");

    // A helper holding an SQLite write transaction open.
    let db = sql(&reg);
    db.execute_batch("BEGIN IMMEDIATE; UPDATE snapshots SET labels = labels;")
        .unwrap();
    for args in reads {
        bounded(&reg, args, &[]).ok();
    }
    // A writer waits for it, says so, and gives up.
    let src = reg.path("src/new");
    make_snapshot(&src, &SnapSpec::new(&image).label("new", "yes"));
    let add = bounded(
        &reg,
        &["add", src.to_str().unwrap(), "--name", "again"],
        &[("MSB_REGISTRY_LOCK_TIMEOUT", "2")],
    );
    assert_eq!(add.code, 4, "{}", add.stderr);
    assert!(
        add.stderr
            .contains("waiting for another msb-registry command")
            && add.stderr.contains("stayed busy"),
        "{}",
        add.stderr
    );
    assert!(
        std::fs::read_dir(reg.root().join("staging"))
            .unwrap()
            .next()
            .is_none(),
        "the refused add left staging behind"
    );
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn issue_12_read_commands_create_nothing() {
    let reg = Reg::new();
    let typo = reg.path("no-such-root");
    for args in [
        &["list"][..],
        &["show", "x"],
        &["lineage", "x"],
        &["sql", "SELECT 1"],
        &["verify"],
        &["export", "x", "-o", reg.path("x.tar").to_str().unwrap()],
    ] {
        let run = Run::from(command_at(&typo, args).output().unwrap());
        run.fails(3, &format!("no registry at {}", typo.display()));
        assert!(!typo.exists(), "{args:?} created the root");
    }
    std::fs::create_dir(&typo).unwrap();
    let run = Run::from(command_at(&typo, &["list"]).output().unwrap());
    run.fails(3, "no registry at");
    assert_eq!(std::fs::read_dir(&typo).unwrap().count(), 0);
}

#[test]
fn issue_17_read_only_storage_reads_work_and_failed_writes_leave_nothing() {
    let reg = Reg::new();
    let Some(mount) = Mount::tmpfs(&reg.root(), "64m") else {
        return;
    };
    let (_, image) = chain_in_registry(&reg);
    let src = reg.path("src/more");
    make_snapshot(&src, &SnapSpec::new(&image).label("more", "yes"));
    let before = crate::crash::state(&reg);

    // The index file alone read-only (a read-only bind mount over it).
    let db = reg.root().join("registry.db");
    let bind = |args: &[&str]| {
        let ok = Command::new("mount").args(args).status().unwrap().success();
        assert!(ok, "mount {args:?}");
    };
    bind(&["--bind", db.to_str().unwrap(), db.to_str().unwrap()]);
    let db_mount = Mount(db.clone());
    bind(&["-o", "remount,ro,bind", db.to_str().unwrap()]);
    let run = reg.run(&["add", src.to_str().unwrap(), "--name", "more"]);
    assert_eq!(run.code, 7, "{}", run.stderr);
    let staging: Vec<_> = std::fs::read_dir(reg.root().join("staging"))
        .unwrap()
        .collect();
    assert!(staging.is_empty(), "left behind: {staging:?}");
    drop(db_mount);

    // The whole root read-only.
    mount.remount(&reg.root(), "remount,ro");
    let out = reg.path("ro.tar.zst");
    for args in [
        &["list"][..],
        &["show", "app"],
        &["lineage", "app"],
        &["sql", "SELECT count(*) FROM snapshots"],
        &["verify", "--content"],
        &[
            "export",
            "app",
            "--with-parents",
            "-o",
            out.to_str().unwrap(),
        ],
    ] {
        reg.run(args).ok();
    }
    assert_eq!(names(&reg), ["app", "base", "deps"]);
    reg.run(&["add", src.to_str().unwrap(), "--name", "more"])
        .fails(7, "Read-only file system");
    mount.remount(&reg.root(), "remount,rw");
    assert_eq!(crate::crash::state(&reg), before);
    crate::crash::assert_clean(&reg);
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn issue_17_list_orders_by_the_instant_created_at_names() {
    let reg = Reg::new();
    let cache = reg.path("cache");
    let image = make_image_cache(&cache, "python:3.12", 1, &[4096]);
    // Oldest to newest in real time; as text they sort otherwise.
    let times = [
        ("east", "2026-10-01T09:00:00+14:00"),
        ("lower", "2026-10-01t08:30:00z"),
        ("half", "2026-10-01T08:30:00.5Z"),
        ("utc", "2026-10-01T09:00:00Z"),
    ];
    for (i, (name, t)) in times.iter().enumerate() {
        let mut spec = SnapSpec::new(&image).label("n", name);
        spec.created_at = t.to_string();
        let dir = reg.path(&format!("src/{name}"));
        make_snapshot(&dir, &spec);
        let mut args = vec!["add", dir.to_str().unwrap(), "--name", name];
        let c = cache.to_str().unwrap().to_string();
        if i == 0 {
            args.extend(["--cache-dir", &c]);
        }
        reg.run(&args).ok();
    }
    let list: Vec<serde_json::Value> = reg.json(&["list"]);
    let order: Vec<&str> = list.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(order, ["utc", "half", "lower", "east"]);
    reg.run(&["verify", "--content"]).ok();
}

/// A way of damaging a registry by hand.
type Damage = fn(&Reg);

/// Every damage scenario of issue 17, each followed by gc (and by reindex
/// and gc again): no directory with a valid manifest is ever deleted.
#[test]
fn issue_17_gc_after_any_damage_keeps_every_snapshot_with_a_valid_manifest() {
    let scenarios: &[(&str, Damage)] = &[
        ("stray directory", |r| {
            std::fs::create_dir(r.root().join("snapshots/deps/stray")).unwrap()
        }),
        ("stray symlink", |r| {
            std::os::unix::fs::symlink("..", r.root().join("snapshots/deps/up")).unwrap()
        }),
        ("index deleted", |r| lose_index(r, "deleted")),
        ("index truncated", |r| lose_index(r, "truncated")),
        ("index malformed", |r| lose_index(r, "malformed")),
        ("not a database", |r| lose_index(r, "not-a-database")),
        ("rows lost", |r| {
            sql(r)
                .execute("DELETE FROM snapshots", [])
                .map(drop)
                .unwrap()
        }),
        ("unindexed copy", |r| {
            let from = r.root().join("snapshots/app");
            let to = r.root().join("snapshots/app-copy");
            std::fs::create_dir(&to).unwrap();
            for f in ["manifest.json", "upper.ext4"] {
                std::fs::copy(from.join(f), to.join(f)).unwrap();
            }
        }),
        ("future mtime", |r| {
            let t = SystemTime::now() + Duration::from_secs(86400 * 400);
            std::fs::File::open(r.root().join("snapshots/base"))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }),
        ("parent cycle", |r| {
            sql(r)
                .execute(
                    "UPDATE snapshots SET parent = (SELECT digest FROM snapshots WHERE name = 'app') WHERE name = 'base'",
                    [],
                )
                .map(drop)
                .unwrap()
        }),
        ("garbage cache path", |r| {
            sql(r)
                .execute(
                    "UPDATE cache_files SET path = '../x' WHERE path LIKE 'fsmeta/%'",
                    [],
                )
                .map(drop)
                .unwrap()
        }),
        ("garbage metadata file", |r| {
            sql(r)
                .execute("UPDATE images SET metadata_file = '/etc/passwd'", [])
                .map(drop)
                .unwrap()
        }),
        ("undecodable labels", |r| {
            sql(r)
                .execute("UPDATE snapshots SET labels = '{' WHERE name = 'base'", [])
                .map(drop)
                .unwrap()
        }),
        ("negative sizes", |r| {
            sql(r)
                .execute("UPDATE snapshot_files SET size = -1", [])
                .map(drop)
                .unwrap()
        }),
        ("renamed directory", |r| {
            std::fs::rename(
                r.root().join("snapshots/deps"),
                r.root().join("snapshots/deps-moved"),
            )
            .unwrap()
        }),
    ];
    for (what, damage) in scenarios {
        let reg = Reg::new();
        chain_in_registry(&reg);
        damage(&reg);
        let before = manifest_dirs(&reg.root());
        assert!(before.len() >= 3, "{what}: {before:?}");
        let cache_before = cache_files(&reg.root());
        for args in [
            &["gc", "--grace", "0"][..],
            &["reindex"],
            &["gc", "--grace", "0"],
        ] {
            let run = bounded(&reg, args, &[]);
            assert!(
                run.code != 101 && run.code >= 0,
                "{what}: {args:?} panicked or was killed: {}",
                run.stderr
            );
            assert_eq!(
                manifest_dirs(&reg.root()),
                before,
                "{what}: {args:?} deleted data"
            );
            assert_eq!(
                cache_files(&reg.root()),
                cache_before,
                "{what}: {args:?} deleted an image the snapshots pin"
            );
        }
        if *what == "unindexed copy" {
            // Reindex cannot index a second copy of a snapshot; verify says so.
            let v = reg.run(&["verify"]);
            assert_eq!(v.code, 5);
            assert!(v.stdout.contains("a copy of snapshot app"), "{}", v.stdout);
            std::fs::remove_dir_all(reg.root().join("snapshots/app-copy")).unwrap();
        }
        let v = reg.run(&["verify", "--content"]);
        assert_eq!(v.code, 0, "{what}: after reindex: {}{}", v.stdout, v.stderr);
    }
}

#[test]
fn a_snapshot_another_connection_commits_while_an_import_promotes_is_a_conflict() {
    let src = Reg::new();
    chain_in_registry(&src);
    let archive = src.path("app.tar.zst");
    let out = archive.to_str().unwrap();
    src.run(&["export", "app", "--with-parents", "--with-image", "-o", out])
        .ok();
    let reg = Reg::new();
    // Between the journal's commit and the rows', a writer outside the
    // registry's lock takes one of the incoming names: the final check must
    // see it even though this import's own connection changed nothing.
    let import = Stopped::at(&reg, &["import", out], "promote.renamed");
    sql(&reg)
        .execute(
            "INSERT INTO snapshots (digest, name, image_ref, image_manifest_digest, format,
             fstype, upper_file, size_bytes, created_at, added_at)
             VALUES ('sha256:' || printf('%064d', 0), 'base', 'python:3.12',
             'sha256:' || printf('%064d', 1), 'raw', 'ext4', 'upper.ext4', 0,
             '2026-10-01T09:00:00Z', 0)",
            [],
        )
        .unwrap();
    let (code, stderr) = import.resume();
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("changed while the import was being checked")
            || stderr.contains("already names"),
        "{stderr}"
    );
    // Every rename was undone. The index this first command created stays:
    // it now names the other writer's snapshot (deletion fails closed), and
    // only that one.
    let names: Vec<String> = sql(&reg)
        .prepare("SELECT name FROM snapshots")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(names, ["base"]);
    let left: Vec<_> = std::fs::read_dir(reg.root().join("snapshots"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{:?}", reg.tree());
}
