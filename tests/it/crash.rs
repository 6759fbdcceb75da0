//! Crash injection: kill the real binary at every journal step (failpoints
//! abort the process like kill -9 would: no destructors, no cleanup), then
//! check that the next command finds a consistent registry holding all of
//! the operation or none of it, and that redoing it gives the clean result.

use std::collections::BTreeSet;

use crate::util::*;

/// Every failpoint on the add/import promotion path, in the order they fire.
pub const PROMOTION_FAILPOINTS: &[&str] = &[
    "lease.acquired",
    "promote.journaled",
    "promote.first-rename",
    "promote.renamed",
    "promote.before-commit",
    "promote.committed",
];

fn sql_set(reg: &Reg, query: &str) -> BTreeSet<String> {
    let out = std::process::Command::new("sqlite3")
        .arg(reg.root().join("registry.db"))
        .arg(query)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn dir_set(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// The index and the disk agree: every row has its files with their sizes,
/// every installed file has its row.
pub fn assert_consistent(reg: &Reg) {
    let rows = sql_set(reg, "SELECT name FROM snapshots");
    assert_eq!(
        rows,
        dir_set(&reg.root().join("snapshots")),
        "snapshot rows vs directories"
    );
    for line in sql_set(
        reg,
        "SELECT s.name || '/' || f.path || '|' || f.size FROM snapshot_files f JOIN snapshots s ON s.digest = f.snapshot",
    ) {
        let (path, size) = line.rsplit_once('|').unwrap();
        let meta = std::fs::metadata(reg.root().join("snapshots").join(path))
            .unwrap_or_else(|_| panic!("row names missing file snapshots/{path}"));
        assert_eq!(meta.len().to_string(), size, "size of snapshots/{path}");
    }
    let cache_rows = sql_set(reg, "SELECT path FROM cache_files");
    let mut cache_disk = BTreeSet::new();
    for kind in ["manifests", "layers", "fsmeta", "vmdk"] {
        for f in dir_set(&reg.root().join("cache").join(kind)) {
            cache_disk.insert(format!("{kind}/{f}"));
        }
    }
    assert_eq!(cache_rows, cache_disk, "cache rows vs files");
    let promoting = sql_set(reg, "SELECT id FROM imports WHERE state = 'promoting'");
    assert!(
        promoting.is_empty(),
        "a promotion was left pending: {promoting:?}"
    );
}

#[test]
fn add_survives_a_crash_at_every_journal_step() {
    let clean = Reg::new();
    let cache = clean.path("cache");
    let image = make_image_cache(&cache, "python:3.12", 3, &[8192, 4096]);
    let snap = clean.path("snap");
    make_snapshot(&snap, &SnapSpec::new(&image));
    let add = [
        "add",
        snap.to_str().unwrap(),
        "--name",
        "s",
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    clean.run(&add).ok();
    let clean_names = sql_set(&clean, "SELECT name || digest FROM snapshots");
    let clean_cache = sql_set(&clean, "SELECT path || digest FROM cache_files");

    for failpoint in PROMOTION_FAILPOINTS {
        let reg = Reg::new();
        let run = reg.run_env(&add, &[("MSB_FAILPOINT", &format!("{failpoint}:abort"))]);
        assert_ne!(run.code, 0, "{failpoint}: the failpoint did not fire");
        reg.run(&["list"]).ok();
        assert_consistent(&reg);
        let names = sql_set(&reg, "SELECT name || digest FROM snapshots");
        let cache = sql_set(&reg, "SELECT path || digest FROM cache_files");
        let all = names == clean_names && cache == clean_cache;
        let none = names.is_empty() && cache.is_empty();
        assert!(
            all || none,
            "{failpoint}: partial state {names:?} {cache:?}"
        );
        assert_eq!(all, *failpoint == "promote.committed", "{failpoint}");

        reg.run(&add).ok();
        assert_consistent(&reg);
        assert_eq!(
            sql_set(&reg, "SELECT name || digest FROM snapshots"),
            clean_names,
            "{failpoint}"
        );
        assert_eq!(
            sql_set(&reg, "SELECT path || digest FROM cache_files"),
            clean_cache,
            "{failpoint}"
        );
    }
}

#[test]
fn rm_survives_a_crash_before_its_commit() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let run = reg.run_env(
        &["rm", "app"],
        &[("MSB_FAILPOINT", "rm.before-commit:abort")],
    );
    assert_ne!(run.code, 0);
    assert_consistent(&reg);
    assert!(sql_set(&reg, "SELECT name FROM snapshots").contains("app"));
    reg.run(&["rm", "app"]).ok();
    assert_consistent(&reg);
}
