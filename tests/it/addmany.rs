//! Issue 25: `add` of several snapshot directories in one command. The
//! directories may come in any order (parents are found by digest); the
//! result equals adding them one by one; any one bad directory refuses the
//! whole command and changes nothing; a kill leaves nothing behind.

use std::path::{Path, PathBuf};

use msb_registry::model::digest::Digest;
use msb_registry::process::failpoint;
use serde_json::Value;

use crate::crash::{Kill, crash_at};
use crate::util::*;

/// A three-snapshot chain base → deps → app under `reg`'s scratch `src/`,
/// each upper with a recorded sha256 integrity, and its image cache.
/// Returns the directories root first, their digests and the cache.
fn chain_dirs(reg: &Reg) -> (Vec<PathBuf>, Vec<Digest>, PathBuf) {
    let cache = reg.path("src-cache");
    let image = make_image_cache(&cache, "python:3.12", 7, &[32768, 16384]);
    let (mut dirs, mut digests) = (Vec::new(), Vec::new());
    for (i, name) in ["base", "deps", "app"].iter().enumerate() {
        let mut spec = SnapSpec::new(&image).label("stage", name);
        spec.integrity = Some("sha256");
        spec.len = 24 << 20;
        spec.data
            .push(((i as u64 + 2) << 20, vec![i as u8 + 1; 9 << 20]));
        if let Some(p) = digests.last() {
            spec = spec.parent(*p);
        }
        let dir = reg.path(&format!("src/{name}"));
        digests.push(make_snapshot(&dir, &spec));
        dirs.push(dir);
    }
    (dirs, digests, cache)
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// `add` of the chain's directories in `order`, with its image cache.
fn add_args<'a>(dirs: &'a [PathBuf], order: [usize; 3], cache: &'a Path) -> Vec<&'a str> {
    let mut args = vec!["add"];
    args.extend(order.map(|i| s(&dirs[i])));
    args.extend(["--cache-dir", s(cache)]);
    args
}

/// What the index says of every snapshot, its files and its chunks.
fn rows(reg: &Reg) -> Vec<Value> {
    let mut out: Vec<Value> = reg.json(&[
        "sql",
        "SELECT s.name, s.digest, s.parent, f.path, f.size, f.digest FROM snapshots s \
         JOIN snapshot_files f ON f.snapshot = s.digest ORDER BY s.name, f.path",
    ]);
    out.extend(reg.json::<Vec<Value>>(&[
        "sql",
        "SELECT path, kind, key, size, digest FROM cache_files ORDER BY 1",
    ]));
    out
}

fn lineage(reg: &Reg) -> Value {
    reg.json(&["lineage", "app", "--descendants"])
}

#[test]
fn a_shuffled_chain_in_one_command_equals_adding_one_by_one() {
    let one_by_one = Reg::new();
    let (dirs, digests, cache) = chain_dirs(&one_by_one);
    for (i, dir) in dirs.iter().enumerate() {
        let mut args = vec!["add", s(dir)];
        if i == 0 {
            args.extend(["--cache-dir", s(&cache)]);
        }
        one_by_one.run(&args).ok();
    }

    for threads in ["1", "4"] {
        let at_once = Reg::new();
        let out = at_once
            .run(
                &[
                    &["--threads", threads][..],
                    &add_args(&dirs, [2, 0, 1], &cache),
                ]
                .concat(),
            )
            .ok();
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines.len(), 4, "{}", out.stdout);
        for (line, (name, digest)) in lines
            .iter()
            .zip(["base", "deps", "app"].iter().zip(&digests))
        {
            assert!(
                line.starts_with(&format!("added {name} ({digest}): 2 files, ")),
                "{line}"
            );
        }
        assert!(lines[3].starts_with("cache: "), "{}", lines[3]);
        assert_eq!(rows(&at_once), rows(&one_by_one), "threads {threads}");
        assert_eq!(lineage(&at_once), lineage(&one_by_one));
        at_once.run(&["verify", "--content"]).ok();
        assert!(
            std::fs::read_dir(at_once.root().join("staging"))
                .unwrap()
                .next()
                .is_none(),
            "staging is left empty"
        );
    }
}

#[test]
fn json_reports_each_snapshot_parents_first_and_a_second_add_changes_nothing() {
    let reg = Reg::new();
    let (dirs, digests, cache) = chain_dirs(&reg);
    let args = add_args(&dirs, [1, 2, 0], &cache);
    let first: Value = reg.json(&args);
    let snapshots = first["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 3);
    for (i, (snap, name)) in snapshots.iter().zip(["base", "deps", "app"]).enumerate() {
        assert_eq!(snap["name"], name);
        assert_eq!(snap["digest"], digests[i].to_string());
        assert_eq!(snap["dir"], s(&dirs[i]));
        assert_eq!(snap["already_present"], false);
        assert_eq!(snap["files"], 2);
        assert_eq!(snap["bytes"], (24 << 20) + first_manifest_len(&dirs[i]));
    }
    assert!(first["cache_files_installed"].as_u64().unwrap() > 0);
    assert_eq!(first["cache_files_skipped"], 0);
    assert_eq!(first["repaired"], Value::Array(vec![]));

    let before = (reg.tree(), reg.dump());
    let again: Value = reg.json(&args);
    for snap in again["snapshots"].as_array().unwrap() {
        assert_eq!(snap["already_present"], true);
    }
    assert_eq!(again["cache_files_installed"], 0);
    assert_eq!(again["cache_files_skipped"], first["cache_files_installed"]);
    assert_eq!((reg.tree(), reg.dump()), before);
}

/// The stored manifest's length: its canonical bytes, as the source's are.
fn first_manifest_len(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir.join("manifest.json")).unwrap().len()
}

#[test]
fn one_bad_upper_among_three_refuses_all_and_changes_nothing() {
    let reg = Reg::new();
    let (dirs, _, cache) = chain_dirs(&reg);
    // Something already here, so "unchanged" is not merely "empty".
    let image = make_image_cache(&reg.path("other-cache"), "alpine:3", 3, &[4096]);
    let other = reg.path("other/lone");
    make_snapshot(&other, &SnapSpec::new(&image).label("lone", "1"));
    reg.run(&["add", s(&other)]).ok();

    // Same size, one byte different: only the integrity hash can tell.
    let upper = dirs[1].join("upper.ext4");
    let mut bytes = std::fs::read(&upper).unwrap();
    bytes[3 << 20] ^= 0xff;
    std::fs::write(&upper, bytes).unwrap();

    let before = (reg.tree(), reg.dump());
    for threads in ["1", "4"] {
        reg.run(
            &[
                &["--threads", threads][..],
                &add_args(&dirs, [0, 1, 2], &cache),
            ]
            .concat(),
        )
        .fails(5, s(&upper));
        assert_eq!((reg.tree(), reg.dump()), before, "threads {threads}");
    }
}

#[test]
fn a_parent_neither_given_nor_present_is_refused_unless_shallow_is_allowed() {
    let reg = Reg::new();
    let (dirs, digests, _) = chain_dirs(&reg);
    let before = (reg.tree(), reg.dump());
    reg.run(&["add", s(&dirs[2]), s(&dirs[1])]).fails(
        3,
        &format!(
            "{}, the parent of {} ({})",
            digests[0],
            digests[1],
            s(&dirs[1])
        ),
    );
    assert_eq!((reg.tree(), reg.dump()), before);

    let out: Value = reg.json(&["add", s(&dirs[2]), s(&dirs[1]), "--allow-shallow"]);
    let names: Vec<&str> = out["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["deps", "app"]);

    // With its parent in the registry, the base need not be given.
    let other = Reg::new();
    other.run(&["add", s(&dirs[0])]).ok();
    other.run(&["add", s(&dirs[2]), s(&dirs[1])]).ok();
    other.run(&["verify", "--content"]).ok();
}

#[test]
fn combinations_that_make_no_sense_are_usage_errors() {
    let reg = Reg::new();
    let (dirs, _, _) = chain_dirs(&reg);
    let before = (reg.tree(), reg.dump());
    reg.run(&["add", s(&dirs[0]), s(&dirs[1]), "--name", "x"])
        .fails(2, "--name takes one directory");
    reg.run(&["add", s(&dirs[0]), s(&dirs[1]), "--signature", "/dev/null"])
        .fails(2, "--signature takes one directory");
    reg.run(&["add", s(&dirs[0]), s(&dirs[1]), s(&dirs[0])])
        .fails(2, "hold the same snapshot");
    // Two directories of the same name would take the same snapshot name.
    let twin = reg.path("elsewhere/base");
    let image = make_image_cache(&reg.path("twin-cache"), "alpine:3", 3, &[4096]);
    make_snapshot(&twin, &SnapSpec::new(&image).label("twin", "1"));
    reg.run(&["add", s(&dirs[0]), s(&twin)]).fails(
        4,
        &format!("both {} and {} would take it", s(&dirs[0]), s(&twin)),
    );
    assert_eq!((reg.tree(), reg.dump()), before);
}

#[test]
fn kill_9_during_a_multi_add_leaves_nothing() {
    let reg = Reg::new();
    let (dirs, _, cache) = chain_dirs(&reg);
    let args = add_args(&dirs, [0, 1, 2], &cache);
    let before = reg.dump();
    // Staged but not promoted; then halfway through the promotion's renames.
    for point in [
        failpoint::ADD_STAGED.to_string(),
        format!("{}@2", failpoint::PROMOTE_RENAME),
    ] {
        crash_at(&reg, &args, &point, Kill::PauseKill);
        // The next command finishes what the dead one left: undone.
        let listed: Vec<Value> = reg.json(&["list"]);
        assert!(listed.is_empty(), "{point}: {listed:?}");
        reg.run(&["gc"]).ok();
        assert_eq!(reg.dump(), before, "{point}");
        assert!(
            std::fs::read_dir(reg.root().join("snapshots"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0,
            "{point}: a snapshot directory is left"
        );
    }
    reg.run(&args).ok();
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn ctrl_c_while_the_uppers_are_hashed_exits_130_and_leaves_nothing() {
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("src-cache"), "python:3.12", 7, &[4096]);
    // Three 6 GiB uppers of holes whose recorded sha256 is never reached:
    // hashing them takes seconds, so the signal lands mid-hash.
    let mut dirs = Vec::new();
    for name in ["one", "two", "three"] {
        let dir = reg.path(&format!("src/{name}"));
        make_snapshot(&dir, &SnapSpec::new(&image).label("name", name));
        let len: u64 = 6 << 30;
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("upper.ext4"))
            .unwrap()
            .set_len(len)
            .unwrap();
        let path = dir.join("manifest.json");
        let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        manifest["upper"]["size_bytes"] = len.into();
        manifest["upper"]["integrity"] = serde_json::json!({
            "algorithm": "sha256",
            "digest": Digest::of(b"never reached").to_string(),
        });
        std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        dirs.push(dir);
    }
    // Something already here, so "unchanged" is not merely "empty".
    let lone = reg.path("other/lone");
    make_snapshot(&lone, &SnapSpec::new(&image).label("lone", "1"));
    reg.run(&["add", s(&lone)]).ok();
    let before = (reg.tree(), reg.dump());
    assert!(before.0.contains_key("snapshots/lone/"), "{:?}", before.0);
    let mut child = reg
        .command(&[
            "--threads",
            "2",
            "add",
            s(&dirs[0]),
            s(&dirs[1]),
            s(&dirs[2]),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let staged = |dir: &std::path::Path| -> bool {
        std::fs::read_dir(dir).into_iter().flatten().any(|lease| {
            let snapshots = lease.unwrap().path().join("snapshots");
            std::fs::read_dir(snapshots)
                .into_iter()
                .flatten()
                .any(|s| s.unwrap().path().join("upper.ext4").exists())
        })
    };
    let mut waited = 0;
    while !staged(&reg.root().join("staging")) {
        assert!(waited < 2000, "no upper was staged");
        std::thread::sleep(std::time::Duration::from_millis(10));
        waited += 1;
    }
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130), "{err}");
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    assert_eq!((reg.tree(), reg.dump()), before);
}
