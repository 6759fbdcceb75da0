//! Issue 22, repair in place: a damaged snapshot (truncated or bit-flipped
//! upper, deleted manifest) is repaired by importing, adding or pulling a
//! good copy; the damaged directory moves into `quarantine/`, which verify
//! lists, reindex ignores, and only `quarantine rm` or gc after its grace
//! period removes. A kill -9 at any step of the repair loses nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use msb_registry::model::digest::Digest;
use msb_registry::process::failpoint;
use serde_json::Value;

use crate::crash::{Kill, crash_at};
use crate::failclosed::files_of;
use crate::ociutil::{OciRegistry, Options, enabled};
use crate::util::*;

/// A registry holding `web` (with its image), the directory it was added
/// from, a good archive of it, and the files of its directory.
struct Setup {
    reg: Reg,
    image: msb_registry::model::image::ImageMetadata,
    src: PathBuf,
    good: PathBuf,
    before: BTreeMap<String, Digest>,
}

impl Setup {
    fn new() -> Self {
        Self::in_reg(Reg::new())
    }

    fn in_reg(reg: Reg) -> Self {
        let cache = reg.path("src-cache");
        let image = make_image_cache(&cache, "python:3.12", 3, &[4096, 262144]);
        add_pinned(&reg, "web", &image, "python:3.12", &cache);
        let good = reg.path("good.tar.zst");
        reg.run(&["export", "web", "-o", good.to_str().unwrap()])
            .ok();
        let before = files_of(&reg.root().join("snapshots/web"));
        Setup {
            image,
            src: reg.path("src/web"),
            reg,
            good,
            before,
        }
    }

    fn web(&self) -> PathBuf {
        self.reg.root().join("snapshots/web")
    }

    fn upper(&self) -> PathBuf {
        self.web().join("upper.ext4")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    Truncated,
    BitFlip,
    /// The manifest deleted, then a reindex that dropped the row.
    NoManifest,
}

const DAMAGE: [Damage; 3] = [Damage::Truncated, Damage::BitFlip, Damage::NoManifest];

/// Damage `web` and check that `verify --content` reports it.
fn damage(s: &Setup, d: Damage) {
    match d {
        Damage::Truncated => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(s.upper())
                .unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len / 2).unwrap();
        }
        Damage::BitFlip => {
            let mut bytes = std::fs::read(s.upper()).unwrap();
            bytes[1 << 20] ^= 1;
            std::fs::write(s.upper(), bytes).unwrap();
        }
        Damage::NoManifest => std::fs::remove_file(s.web().join("manifest.json")).unwrap(),
    }
    let v = s.reg.run(&["verify", "--content"]);
    assert_eq!(v.code, 5, "{d:?} is reported: {}", v.stdout);
    assert!(v.stdout.contains("snapshots/web/"), "{}", v.stdout);
    if d == Damage::NoManifest {
        s.reg.run(&["reindex"]).ok();
        assert!(names(&s.reg).is_empty(), "reindex dropped the row");
    }
}

/// The names `list` shows.
fn names(reg: &Reg) -> Vec<String> {
    let list: Value = reg.json(&["list"]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

/// The entries of `quarantine/`.
fn quarantined(reg: &Reg) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(reg.root().join("quarantine")) else {
        return Vec::new();
    };
    let mut v: Vec<String> = read
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// After a repair: the good copy in place, verify clean and listing the
/// one quarantined copy, reindex leaving it alone.
#[track_caller]
fn assert_repaired(s: &Setup, run: &Run, what: &str) {
    assert!(
        run.stderr.contains("repaired snapshot web (")
            && run.stderr.contains("damaged copy moved to quarantine/web-"),
        "{what}: {}",
        run.stderr
    );
    assert_eq!(files_of(&s.web()), s.before, "{what}");
    let q = quarantined(&s.reg);
    assert_eq!(q.len(), 1, "{what}: {q:?}");
    let v = s.reg.run(&["verify", "--content"]).ok();
    assert!(
        v.stdout
            .contains(&format!("quarantined: quarantine/{}", q[0])),
        "{what}: {}",
        v.stdout
    );
    let json: Value = s.reg.json(&["verify"]);
    assert_eq!(json["ok"], true);
    assert_eq!(
        json["quarantined"][0]["path"],
        format!("quarantine/{}", q[0])
    );
    assert_eq!(json["quarantined"][0]["name"], "web");
    s.reg.run(&["reindex"]).ok();
    assert_eq!(
        names(&s.reg),
        ["web"],
        "{what}: reindex ignores the quarantine"
    );
    s.reg.run(&["verify", "--content"]).ok();
}

#[test]
fn issue_22_each_damage_is_repaired_by_import_of_a_good_archive() {
    for d in DAMAGE {
        let s = Setup::new();
        damage(&s, d);
        let args = ["import", s.good.to_str().unwrap(), "--repair"];
        let run = s.reg.run(&args).ok();
        assert_repaired(&s, &run, &format!("{d:?}"));
    }
}

#[test]
fn issue_22_each_damage_is_repaired_by_add_of_a_good_directory() {
    for d in DAMAGE {
        let s = Setup::new();
        damage(&s, d);
        let src = s.src.to_str().unwrap();
        let run = s.reg.run(&["add", src, "--name", "web", "--repair"]).ok();
        assert_repaired(&s, &run, &format!("{d:?}"));
    }
}

#[test]
fn issue_22_without_repair_only_a_bit_flip_of_the_right_size_goes_unnoticed() {
    // Size and manifest are checked on every import: no --repair needed.
    let s = Setup::new();
    damage(&s, Damage::Truncated);
    let run = s.reg.run(&["import", s.good.to_str().unwrap()]).ok();
    assert_repaired(&s, &run, "truncated, plain import");

    // A flipped bit keeps the size: a plain import leaves the copy as it is
    // (it re-hashes nothing it already holds), --repair finds and repairs it.
    let s = Setup::new();
    damage(&s, Damage::BitFlip);
    let damaged = files_of(&s.web());
    let run = s.reg.run(&["import", s.good.to_str().unwrap()]).ok();
    assert!(!run.stderr.contains("repaired"), "{}", run.stderr);
    assert_eq!(files_of(&s.web()), damaged);
    assert!(quarantined(&s.reg).is_empty());
    let run = s
        .reg
        .run(&["import", s.good.to_str().unwrap(), "--repair"])
        .ok();
    assert_repaired(&s, &run, "bit flip, --repair");
}

#[test]
fn issue_22_an_intact_copy_is_never_moved() {
    let s = Setup::new();
    for args in [
        vec!["import", s.good.to_str().unwrap(), "--repair"],
        vec!["import", s.good.to_str().unwrap()],
        vec!["add", s.src.to_str().unwrap(), "--name", "web", "--repair"],
    ] {
        let run = s.reg.run(&args).ok();
        assert!(!run.stderr.contains("repaired"), "{args:?}: {}", run.stderr);
        assert!(quarantined(&s.reg).is_empty(), "{args:?}");
        assert_eq!(files_of(&s.web()), s.before);
    }
}

#[test]
fn issue_22_an_intact_unindexed_snapshot_in_the_way_is_refused_naming_reindex() {
    let s = Setup::new();
    // An intact snapshot sits without a row under the name an add wants.
    let lost = s.reg.root().join("snapshots/lost");
    make_snapshot(&lost, &SnapSpec::new(&s.image).label("seed", "lost"));
    let newer = s.reg.path("newer");
    make_snapshot(&newer, &SnapSpec::new(&s.image).label("seed", "newer"));
    let before = files_of(&lost);
    let run = s
        .reg
        .run(&["add", newer.to_str().unwrap(), "--name", "lost", "--repair"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stderr.contains("intact snapshot") && run.stderr.contains("msb-registry reindex"),
        "{}",
        run.stderr
    );
    assert_eq!(files_of(&lost), before);
    assert!(quarantined(&s.reg).is_empty());
    // A rename onto it says the same.
    let r = s.reg.run(&["rename", "web", "lost"]);
    assert_eq!(r.code, 4);
    assert!(r.stderr.contains("msb-registry reindex"), "{}", r.stderr);
}

#[test]
fn issue_22_quarantine_is_removed_only_by_its_command_or_by_gc_after_grace() {
    let s = Setup::new();
    damage(&s, Damage::Truncated);
    s.reg.run(&["import", s.good.to_str().unwrap()]).ok();
    let q = quarantined(&s.reg);
    assert_eq!(q.len(), 1);
    let entry = format!("quarantine/{}", q[0]);

    let listed = s.reg.run(&["quarantine", "list"]).ok();
    assert!(listed.stdout.contains(&entry), "{}", listed.stdout);
    let dry: Value = s.reg.json(&["gc", "--dry-run", "--grace", "0"]);
    assert!(
        dry["removed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"] == entry.as_str() && r["kind"] == "quarantine"),
        "{dry}"
    );
    // Within the grace period gc keeps it, and says why.
    let kept: Value = s.reg.json(&["gc"]);
    assert!(
        kept["kept"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["path"] == entry.as_str() && k["reason"] == "quarantined"),
        "{kept}"
    );
    let text = s.reg.run(&["gc", "--dry-run"]).ok();
    assert!(
        text.stdout
            .contains(&format!("kept {entry}: a damaged copy")),
        "{}",
        text.stdout
    );
    assert_eq!(quarantined(&s.reg), q);

    // quarantine rm names entries; an unknown one is exit 3 and removes nothing.
    s.reg
        .run(&["quarantine", "rm", &entry, "quarantine/nope-1"])
        .fails(3, "quarantine entry not found");
    assert_eq!(quarantined(&s.reg), q);
    s.reg
        .run(&["quarantine", "rm", "../snapshots"])
        .fails(2, "invalid quarantine entry");
    let rm = s.reg.run(&["quarantine", "rm", &entry]).ok();
    assert!(
        rm.stdout.contains(&format!("removed {entry}")),
        "{}",
        rm.stdout
    );
    assert!(quarantined(&s.reg).is_empty());
    s.reg.run(&["verify", "--content"]).ok();

    // gc after the grace period.
    damage(&s, Damage::Truncated);
    s.reg.run(&["import", s.good.to_str().unwrap()]).ok();
    assert_eq!(quarantined(&s.reg).len(), 1);
    // A name the foreign-name grammar hides is never listed nor removed.
    let foreign = s.reg.root().join("quarantine/web-1.lock");
    std::fs::write(&foreign, b"").unwrap();
    let gc: Value = s.reg.json(&["gc", "--grace", "0"]);
    assert_eq!(gc["totals"].as_array().unwrap().len(), 1, "{gc}");
    assert_eq!(quarantined(&s.reg), ["web-1.lock"]);
    assert!(
        !s.reg
            .run(&["quarantine", "list"])
            .ok()
            .stdout
            .contains(".lock")
    );
    s.reg.run(&["verify", "--content"]).ok();
    assert_eq!(files_of(&s.web()), s.before);
}

#[test]
fn issue_22_a_kill_at_each_step_of_a_repair_loses_nothing() {
    let points = [
        failpoint::PROMOTE_JOURNALED.to_string(),
        format!("{}@1", failpoint::PROMOTE_RENAME),
        format!("{}@2", failpoint::PROMOTE_RENAME),
        failpoint::PROMOTE_RENAMED.to_string(),
        failpoint::PROMOTE_BEFORE_COMMIT.to_string(),
        failpoint::PROMOTE_COMMITTED.to_string(),
    ];
    for (i, point) in points.iter().enumerate() {
        for d in [Damage::Truncated, Damage::NoManifest] {
            let s = Setup::new();
            damage(&s, d);
            let damaged = files_of(&s.web());
            let kill = if i % 2 == 0 {
                Kill::Abort
            } else {
                Kill::PauseKill
            };
            crash_at(&s.reg, &["import", s.good.to_str().unwrap()], point, kill);
            let what = format!("{d:?} at {point}");
            // A reader sees one state or the other; the next writer (a gc
            // that deletes nothing) recovers: the damaged copy is back in
            // place (rolled back) or in the quarantine (committed), never lost.
            let read = s.reg.run(&["verify", "--content"]);
            assert!(matches!(read.code, 0 | 5), "{what}: {}", read.stderr);
            s.reg.run(&["gc", "--dry-run"]).ok();
            let v = s.reg.run(&["verify", "--content"]);
            let q = quarantined(&s.reg);
            if point == failpoint::PROMOTE_COMMITTED {
                assert_eq!(v.code, 0, "{what}: {}", v.stdout);
                assert_eq!(files_of(&s.web()), s.before, "{what}");
                assert_eq!(q.len(), 1, "{what}");
                let qdir = s.reg.root().join("quarantine").join(&q[0]);
                assert_eq!(files_of(&qdir), damaged, "{what}");
            } else {
                if d == Damage::NoManifest {
                    assert!(
                        v.stdout.contains("debris: snapshots/web"),
                        "{what}: {}",
                        v.stdout
                    );
                } else {
                    assert_eq!(
                        v.code, 5,
                        "{what}: the damage is still reported: {}",
                        v.stdout
                    );
                }
                assert!(q.is_empty(), "{what}: {q:?}");
                assert_eq!(files_of(&s.web()), damaged, "{what}");
                let redo = s.reg.run(&["import", s.good.to_str().unwrap()]).ok();
                assert_repaired(&s, &redo, &what);
            }
            s.reg.run(&["gc", "--grace", "0"]).ok();
            s.reg.run(&["verify", "--content"]).ok();
            assert_eq!(files_of(&s.web()), s.before, "{what}");
        }
    }
}

#[test]
fn issue_22_a_pull_of_a_good_copy_repairs_a_snapshot_reindex_dropped() {
    if !enabled() {
        return;
    }
    let remote = OciRegistry::start(Options::plain());
    let s = Setup::new();
    let target = format!("{}:web", remote.repo("snaps"));
    s.reg.run(&["push", "web", &target, "--insecure"]).ok();
    damage(&s, Damage::Truncated);
    // reindex drops the row of a snapshot whose upper fails its manifest.
    s.reg.run(&["reindex"]).ok();
    assert!(names(&s.reg).is_empty(), "reindex dropped the row");
    let run = s.reg.run(&["pull", &target, "--insecure"]).ok();
    assert_repaired(&s, &run, "pull");
}

#[test]
fn issue_22_a_pull_repairs_a_damaged_snapshot_whose_row_is_still_here() {
    if !enabled() {
        return;
    }
    let remote = OciRegistry::start(Options::plain());
    for (d, args) in [
        (Damage::Truncated, &[][..]),
        (Damage::BitFlip, &["--repair"][..]),
    ] {
        let s = Setup::new();
        let target = format!("{}:web-{d:?}", remote.repo("snaps")).to_lowercase();
        s.reg.run(&["push", "web", &target, "--insecure"]).ok();
        damage(&s, d);
        assert_eq!(names(&s.reg), ["web"], "{d:?}: the row stays");
        if d == Damage::BitFlip {
            // Of the right size, the flip passes the cheap check: a plain
            // pull calls the snapshot present and changes nothing.
            let plain = s.reg.run(&["pull", &target, "--insecure"]).ok();
            assert!(!plain.stderr.contains("repaired"), "{}", plain.stderr);
            assert!(quarantined(&s.reg).is_empty());
        }
        let mut argv = vec!["pull", target.as_str(), "--insecure"];
        argv.extend_from_slice(args);
        let run = s.reg.run(&argv).ok();
        assert_repaired(&s, &run, &format!("pull {d:?}"));
    }
}

/// A gc on a full disk frees room for its row deletion one file at a time,
/// files no row names first: killed after its first deletion, it leaves
/// either no stale row (a quarantine entry went first) or one row of an
/// unreferenced cache file whose file is gone, which verify reports, an
/// import of that image restores and the next gc deletes. No file of a
/// live snapshot is touched.
#[test]
fn issue_22_a_gc_killed_on_a_full_disk_leaves_no_unreported_stale_row() {
    let reg = Reg::new();
    let Some(_mount) = crate::diskfull::Mount::tmpfs(&reg.root(), "48m") else {
        return;
    };
    let s = Setup::in_reg(reg);
    let with_image = s.reg.path("web-image.tar.zst");
    s.reg
        .run(&[
            "export",
            "web",
            "--with-image",
            "-o",
            with_image.to_str().unwrap(),
        ])
        .ok();
    let other_cache = s.reg.path("other-cache");
    let other_image = make_image_cache(&other_cache, "alpine:3", 9, &[4096]);
    let other = s.reg.path("other");
    let mut spec = SnapSpec::new(&other_image).label("seed", "other");
    spec.image.0 = "alpine:3".into();
    make_snapshot(&other, &spec);
    let cache_files = || {
        let v: Value = s.reg.json(&["sql", "SELECT path FROM cache_files"]);
        v.as_array().unwrap().len()
    };

    // A quarantine entry older than the grace period goes first: a kill
    // right after it leaves every row with its file.
    damage(&s, Damage::Truncated);
    s.reg.run(&["import", s.good.to_str().unwrap()]).ok();
    s.reg.run(&["rm", "web"]).ok();
    let pinned_before = cache_files();
    assert!(pinned_before > 0);
    crate::storage::fill(&s.reg.root());
    crash_at(
        &s.reg,
        &["gc", "--grace", "0"],
        &format!("{}@1", failpoint::GC_FILE_REMOVED),
        Kill::Abort,
    );
    assert!(quarantined(&s.reg).is_empty());
    s.reg.run(&["verify", "--content"]).ok();
    assert_eq!(cache_files(), pinned_before);

    // Nothing without a row to delete: one cache file goes before its row.
    crate::storage::fill(&s.reg.root());
    crash_at(
        &s.reg,
        &["gc", "--grace", "0"],
        &format!("{}@1", failpoint::GC_FILE_REMOVED),
        Kill::Abort,
    );
    let v = s.reg.run(&["verify"]);
    assert_eq!(v.code, 5, "the stale row is reported: {}", v.stdout);
    assert!(
        v.stdout.contains("problem: missing: cache/"),
        "{}",
        v.stdout
    );
    std::fs::remove_file(s.reg.root().join("filler")).unwrap();
    // An import bringing the image puts the file back under its row.
    s.reg.run(&["import", with_image.to_str().unwrap()]).ok();
    s.reg.run(&["verify", "--content"]).ok();

    // And a gc that finishes deletes the rest, rows and files.
    s.reg
        .run(&[
            "add",
            other.to_str().unwrap(),
            "--name",
            "other",
            "--cache-dir",
            other_cache.to_str().unwrap(),
        ])
        .ok();
    let other_files = files_of(&s.reg.root().join("snapshots/other"));
    s.reg.run(&["rm", "web"]).ok();
    crate::storage::fill(&s.reg.root());
    crash_at(
        &s.reg,
        &["gc", "--grace", "0"],
        &format!("{}@1", failpoint::GC_FILE_REMOVED),
        Kill::Abort,
    );
    s.reg.run(&["gc", "--grace", "0"]).ok();
    s.reg.run(&["verify", "--content"]).ok();
    assert_eq!(files_of(&s.reg.root().join("snapshots/other")), other_files);
}
