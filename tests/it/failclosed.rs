//! Issue 22 (gc and repair): gc deletes only what it positively knows is
//! ours and unused. Snapshot directories it cannot prove are not snapshots,
//! directories holding another snapshot than their row, and everything an
//! unindexed snapshot pins are kept, each with a reason `gc --dry-run`
//! prints; verify names them.

use std::collections::BTreeMap;
use std::path::Path;

use msb_registry::model::digest::Digest;
use msb_registry::model::image::{CacheFile, ImageMetadata};
use serde_json::Value;

use crate::util::*;

/// Rewrite `dir/manifest.json` through `edit` (pretty-printed, as a
/// hand edit or another writer would leave it).
pub fn rewrite_manifest(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("manifest.json");
    let mut value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}

/// Every file under `dir` with the digest of its bytes.
pub fn files_of(dir: &Path) -> BTreeMap<String, Digest> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, Digest::of(&std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// Every cache file an image owns, root-relative.
fn image_paths(image: &ImageMetadata, reference: &str) -> Vec<String> {
    let mut v = vec![format!(
        "cache/{}",
        CacheFile::metadata_for_ref(reference).rel_path()
    )];
    for f in image.artifact_files() {
        v.push(format!("cache/{}", f.rel_path()));
    }
    v
}

/// `(path, reason)` of each kept entry of a gc report.
fn kept(r: &Value) -> Vec<(String, String)> {
    r["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["path"].as_str().unwrap().to_string(),
                k["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn removed(r: &Value) -> Vec<String> {
    r["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["path"].as_str().unwrap().to_string())
        .collect()
}

/// A sample snapshot directory written at `dir` pinned to `image`.
fn sample_dir(dir: &Path, image: &ImageMetadata, seed: &str) -> Digest {
    make_snapshot(dir, &SnapSpec::new(image).label("seed", seed))
}

#[test]
fn issue_22_a_manifest_gc_cannot_validate_is_kept_and_named() {
    let reg = Reg::new();
    let cache = reg.path("src-cache");
    let image = make_image_cache(&cache, "python:3.12", 3, &[4096]);
    add_pinned(&reg, "app", &image, "python:3.12", &cache);
    let snapshots = reg.root().join("snapshots");
    type Edit = fn(&mut Value);
    let unvalidated: [(&str, Edit, &str); 3] = [
        (
            "algo",
            |m| m["upper"]["integrity"]["algorithm"] = "blake3".into(),
            "blake3",
        ),
        (
            "tab",
            |m| m["labels"]["note"] = "a\tb".into(),
            "labels.note",
        ),
        (
            "newer",
            |m| {
                m["schema"] = 2.into();
                m["zstd_frames"] = Value::Array(vec![]);
            },
            "zstd_frames",
        ),
    ];
    for (name, edit, _) in &unvalidated {
        let dir = snapshots.join(name);
        sample_dir(&dir, &image, name);
        rewrite_manifest(&dir, edit);
    }
    // Provably not snapshots: a manifest that is not JSON, and none at all.
    let junk = snapshots.join("junk");
    sample_dir(&junk, &image, "junk");
    std::fs::write(junk.join("manifest.json"), b"\x00\x01 not json").unwrap();
    let bare = snapshots.join("bare");
    std::fs::create_dir(&bare).unwrap();
    std::fs::write(bare.join("upper.ext4"), b"x").unwrap();
    let before: Vec<_> = unvalidated
        .iter()
        .map(|(n, _, _)| files_of(&snapshots.join(n)))
        .collect();

    let dry: Value = reg.json(&["gc", "--dry-run", "--grace", "0"]);
    let text = reg.run(&["gc", "--dry-run", "--grace", "0"]).ok().stdout;
    let real: Value = reg.json(&["gc", "--grace", "0"]);
    assert_eq!(removed(&dry), removed(&real));
    assert_eq!(removed(&real), ["snapshots/bare", "snapshots/junk"]);
    let mut expected: Vec<(String, String)> = unvalidated
        .iter()
        .map(|(n, _, _)| (format!("snapshots/{n}"), "unvalidated".to_string()))
        .collect();
    expected.sort();
    assert_eq!(kept(&real), expected);
    for (i, (name, _, why)) in unvalidated.iter().enumerate() {
        assert_eq!(files_of(&snapshots.join(name)), before[i], "{name}");
        let path = format!("snapshots/{name}");
        let k = real["kept"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["path"] == path.as_str())
            .unwrap();
        assert!(k["why"].as_str().unwrap().contains(why), "{k}");
        assert!(text.contains(&format!("snapshots/{name}")), "{text}");
    }
    assert!(text.contains("cannot validate"), "{text}");
    // The image the kept directories pin keeps its files.
    for p in image_paths(&image, "python:3.12") {
        assert!(reg.root().join(&p).exists(), "{p}");
    }

    let v = reg.run(&["verify"]);
    assert_eq!(v.code, 5, "{}", v.stdout);
    for (name, _, why) in &unvalidated {
        let line = v
            .stdout
            .lines()
            .find(|l| l.contains(&format!("snapshots/{name}")))
            .unwrap_or_else(|| panic!("{name}: {}", v.stdout));
        assert!(
            line.contains("cannot be validated") && line.contains(why),
            "{line}"
        );
    }
    // reindex leaves them too, and still nothing is deleted.
    reg.run(&["reindex"]);
    reg.run(&["gc", "--grace", "0"]).ok();
    for (i, (name, _, _)) in unvalidated.iter().enumerate() {
        assert_eq!(files_of(&snapshots.join(name)), before[i], "{name}");
    }
}

#[test]
fn issue_22_a_directory_holding_another_snapshot_than_its_row_loses_nothing() {
    let reg = Reg::new();
    let cache = reg.path("src-cache");
    let image = make_image_cache(&cache, "python:3.12", 3, &[4096]);
    add_pinned(&reg, "head", &image, "python:3.12", &cache);
    // microsandbox re-saves `head` as a qcow2 snapshot (or an older index
    // is restored): the directory holds another valid snapshot.
    let head = reg.root().join("snapshots/head");
    std::fs::remove_dir_all(&head).unwrap();
    sample_dir(&head, &image, "resaved");
    std::fs::rename(head.join("upper.ext4"), head.join("upper.qcow2")).unwrap();
    rewrite_manifest(&head, |m| {
        m["format"] = "qcow2".into();
        m["upper"]["file"] = "upper.qcow2".into();
    });
    let before = files_of(&head);

    let real: Value = reg.json(&["gc", "--grace", "0"]);
    assert!(removed(&real).is_empty(), "{real}");
    assert_eq!(
        kept(&real),
        [("snapshots/head".to_string(), "mismatch".to_string())]
    );
    assert!(
        real["kept"][0]["why"]
            .as_str()
            .unwrap()
            .contains("the index records"),
        "{real}"
    );
    assert_eq!(files_of(&head), before);
    let v = reg.run(&["verify"]);
    assert_eq!(v.code, 5);
    assert!(
        v.stdout.contains("missing: snapshots/head/upper.ext4"),
        "{}",
        v.stdout
    );
    // Without the manifest, nothing says it is not a snapshot: still kept.
    std::fs::remove_file(head.join("manifest.json")).unwrap();
    let real: Value = reg.json(&["gc", "--grace", "0"]);
    assert!(removed(&real).is_empty(), "{real}");
    assert_eq!(
        kept(&real),
        [("snapshots/head".to_string(), "mismatch".to_string())]
    );
    assert!(head.join("upper.qcow2").exists());
}

#[test]
fn issue_22_an_image_only_an_unindexed_snapshot_pins_keeps_its_files() {
    let reg = Reg::new();
    let (cache_a, cache_b) = (reg.path("cache-a"), reg.path("cache-b"));
    let a = make_image_cache(&cache_a, "python:3.12", 1, &[4096, 8192]);
    let b = make_image_cache(&cache_b, "alpine:3.20", 2, &[4096]);
    add_pinned(&reg, "s1", &a, "python:3.12", &cache_a);
    let db = reg.root().join("registry.db");
    let backup = reg.path("backup.db");
    std::fs::copy(&db, &backup).unwrap();
    add_pinned(&reg, "s2", &b, "alpine:3.20", &cache_b);
    for side in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(reg.root().join(format!("registry.db{side}")));
    }
    std::fs::copy(&backup, &db).unwrap();
    let s2 = files_of(&reg.root().join("snapshots/s2"));
    let b_files = image_paths(&b, "alpine:3.20");
    let b_bytes: Vec<Vec<u8>> = b_files
        .iter()
        .map(|p| std::fs::read(reg.root().join(p)).unwrap())
        .collect();

    let dry: Value = reg.json(&["gc", "--dry-run", "--grace", "0"]);
    let real: Value = reg.json(&["gc", "--grace", "0"]);
    assert_eq!(removed(&dry), removed(&real));
    assert!(removed(&real).is_empty(), "{real}");
    let kept = kept(&real);
    for p in &b_files {
        assert!(
            kept.contains(&(p.clone(), "pinned-unindexed".to_string())),
            "{p}: {kept:?}"
        );
    }
    for (p, bytes) in b_files.iter().zip(&b_bytes) {
        assert_eq!(&std::fs::read(reg.root().join(p)).unwrap(), bytes, "{p}");
    }
    assert_eq!(files_of(&reg.root().join("snapshots/s2")), s2);
    // reindex adopts s2 with its image; then everything is clean.
    reg.run(&["reindex"]).ok();
    let v = reg.run(&["verify", "--content"]);
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
}

/// `kill -CONT` a process a failpoint stopped; its exit code.
fn resume(held: Held) -> i32 {
    let Held { mut child, .. } = held;
    let status = std::process::Command::new("kill")
        .args(["-CONT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap().code().unwrap_or(-1)
}

#[test]
fn issue_22_two_reindex_runs_on_a_lost_index_never_install_an_empty_one() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    std::fs::remove_file(reg.root().join("registry.db")).unwrap();
    // The first reindex has built the new index and not installed it yet.
    let first = reg.held_at(&["reindex"], "reindex.rebuilt", Hold::Stop);
    // It still holds the registry lock: a second reindex cannot start,
    // so cannot remove or replace the rebuild it is about to install.
    let second = reg.run_env(&["reindex"], &[("MSB_REGISTRY_LOCK_TIMEOUT", "1")]);
    assert_eq!(second.code, 4, "{}", second.stderr);
    assert!(second.stderr.contains("registry.lock"), "{}", second.stderr);
    assert_eq!(resume(first), 0);
    let list: Vec<Value> = reg.json(&["list"]);
    assert_eq!(list.len(), 3, "{list:?}");
    // A rebuild left by a reindex killed before installing it is never
    // installed by the next: that one builds (and installs) its own.
    std::fs::remove_file(reg.root().join("registry.db")).unwrap();
    let killed = reg.held_at(&["reindex"], "reindex.rebuilt", Hold::Pause);
    let Held { mut child, .. } = killed;
    child.kill().unwrap();
    child.wait().unwrap();
    let rebuild = reg.root().join("registry.db.rebuild");
    assert!(rebuild.exists());
    std::fs::write(&rebuild, b"not the index the next reindex builds").unwrap();
    reg.run(&["reindex"]).ok();
    let list: Vec<Value> = reg.json(&["list"]);
    assert_eq!(list.len(), 3, "{list:?}");
    reg.run(&["verify", "--content"]).ok();
}

/// Give snapshot `from` of `reg` the name `to` behind the registry's back
/// (as an older version could have): row and directory.
fn force_name(reg: &Reg, from: &str, to: &str) {
    let conn = rusqlite::Connection::open(reg.root().join("registry.db")).unwrap();
    conn.execute("UPDATE snapshots SET name = ?1 WHERE name = ?2", [to, from])
        .unwrap();
    std::fs::rename(
        reg.root().join("snapshots").join(from),
        reg.root().join("snapshots").join(to),
    )
    .unwrap();
}

#[test]
fn issue_22_names_the_foreign_grammar_hides_or_that_impersonate_a_digest_are_refused() {
    let reg = Reg::new();
    let cache = reg.path("src-cache");
    let image = make_image_cache(&cache, "python:3.12", 3, &[4096]);
    let (x, b) = (reg.path("x"), reg.path("b"));
    let xd = sample_dir(&x, &image, "x");
    let bd = sample_dir(&b, &image, "b");
    let b_prefix = format!("sha256-{}", &bd.hex()[..16]);
    let hidden = ["web.lock", "web.part", "web.work"];
    for name in hidden.iter().copied().chain([b_prefix.as_str()]) {
        reg.run(&["add", x.to_str().unwrap(), "--name", name])
            .fails(2, "invalid snapshot name");
    }
    // Its own digest-prefix name is fine.
    let own = format!("sha256-{}", &xd.hex()[..16]);
    reg.run(&["add", x.to_str().unwrap(), "--name", &own]).ok();
    for name in hidden.iter().copied().chain([b_prefix.as_str()]) {
        reg.run(&["rename", &own, name])
            .fails(2, "invalid snapshot name");
    }
    reg.run(&["rename", &own, "web"]).ok();

    // Carried names: the same names fall back to the digest prefix, saying so.
    for carried in hidden.iter().copied().chain([b_prefix.as_str()]) {
        let src = Reg::new();
        src.run(&["add", x.to_str().unwrap(), "--name", "web"]).ok();
        force_name(&src, "web", carried);
        let archive = src.path("x.tar.zst");
        src.run(&["export", carried, "-o", archive.to_str().unwrap()])
            .ok();
        let dst = Reg::new();
        let r = dst.run(&["import", archive.to_str().unwrap()]).ok();
        assert!(
            r.stderr.contains("invalid snapshot name"),
            "{carried}: {}",
            r.stderr
        );
        let list: Vec<Value> = dst.json(&["list"]);
        assert_eq!(list[0]["name"], own.as_str(), "{carried}");
        // The genuine B, arriving unnamed later, takes its own prefix name.
        dst.run(&["add", b.to_str().unwrap(), "--name", &b_prefix])
            .ok();
        let export = dst.run(&["show", &b_prefix, "--json"]).ok();
        assert!(export.stdout.contains(&bd.to_string()), "{}", export.stdout);
        dst.run(&["verify"]).ok();
    }
}

#[test]
fn issue_22_after_a_crashed_rename_readers_see_it_renamed_and_verify_advises_no_deletion() {
    let reg = Reg::new();
    let cache = reg.path("src-cache");
    let image = make_image_cache(&cache, "python:3.12", 3, &[4096]);
    add_pinned(&reg, "web", &image, "python:3.12", &cache);
    let before = files_of(&reg.root().join("snapshots/web"));
    let crashed = reg.run_env(
        &["rename", "web", "site"],
        &[("MSB_FAILPOINT", "rename.committed:abort")],
    );
    assert_ne!(crashed.code, 0);
    assert!(reg.root().join("snapshots/web").is_dir());
    assert!(!reg.root().join("snapshots/site").exists());
    // Readers, before any writer rolls the rename forward.
    let v = reg.run(&["verify", "--content"]);
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
    assert!(!v.stdout.contains("remove the copy"), "{}", v.stdout);
    let archive = reg.path("site.tar.zst");
    reg.run(&["export", "site", "-o", archive.to_str().unwrap()])
        .ok();
    let du: Value = reg.json(&["du"]);
    assert!(
        du["snapshots"][0]["data_bytes"].as_u64().unwrap() > 0,
        "{du}"
    );
    assert!(
        !reg.root().join("snapshots/site").exists(),
        "a reader wrote"
    );
    let other = Reg::new();
    other.run(&["import", archive.to_str().unwrap()]).ok();
    other.run(&["verify", "--content"]).ok();
    // gc (a writer) rolls it forward and deletes nothing.
    let gc: Value = reg.json(&["gc", "--grace", "0"]);
    assert!(removed(&gc).is_empty(), "{gc}");
    assert_eq!(files_of(&reg.root().join("snapshots/site")), before);
    assert!(!reg.root().join("snapshots/web").exists());
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn issue_22_a_damaged_snapshot_is_repaired_by_the_documented_commands() {
    let reg = Reg::new();
    let cache = reg.path("src-cache");
    let image = make_image_cache(&cache, "python:3.12", 3, &[4096]);
    add_pinned(&reg, "web", &image, "python:3.12", &cache);
    let good = reg.path("good.tar.zst");
    reg.run(&["export", "web", "-o", good.to_str().unwrap()])
        .ok();
    let web = reg.root().join("snapshots/web");
    let before = files_of(&web);

    // A bit flipped in the upper: verify names it; an import of the good
    // copy with --repair (which re-hashes the copy here) moves the damaged
    // directory to quarantine/ and installs the good one.
    let upper = web.join("upper.ext4");
    let mut bytes = std::fs::read(&upper).unwrap();
    bytes[1 << 20] ^= 1;
    std::fs::write(&upper, bytes).unwrap();
    let v = reg.run(&["verify", "--content"]);
    assert_eq!(v.code, 5, "{}", v.stdout);
    assert!(
        v.stdout.contains("snapshots/web/upper.ext4"),
        "{}",
        v.stdout
    );
    let run = reg
        .run(&["import", "--repair", good.to_str().unwrap()])
        .ok();
    assert!(
        run.stderr.contains("repaired snapshot web"),
        "{}",
        run.stderr
    );
    assert_eq!(files_of(&web), before);
    let v = reg.run(&["verify", "--content"]).ok();
    assert!(
        v.stdout.contains("quarantined: quarantine/web-"),
        "{}",
        v.stdout
    );
    reg.run(&["quarantine", "rm", "--all"]).ok();
    reg.run(&["verify", "--content"]).ok();

    // A deleted manifest, and a reindex that dropped the row: the import
    // of the good copy repairs it the same way.
    std::fs::remove_file(web.join("manifest.json")).unwrap();
    reg.run(&["reindex"]).ok();
    let run = reg.run(&["import", good.to_str().unwrap()]).ok();
    assert!(
        run.stderr.contains("repaired snapshot web"),
        "{}",
        run.stderr
    );
    assert_eq!(files_of(&web), before);
    reg.run(&["verify", "--content"]).ok();
    let gc: Value = reg.json(&["gc", "--grace", "0"]);
    assert!(
        removed(&gc)
            .iter()
            .any(|p| p.starts_with("quarantine/web-")),
        "{gc}"
    );
    reg.run(&["verify", "--content"]).ok();

    // A rename onto an unindexed snapshot's directory says reindex, not gc.
    let lost = reg.root().join("snapshots/lost");
    sample_dir(&lost, &image, "lost");
    let r = reg.run(&["rename", "web", "lost"]);
    assert_eq!(r.code, 4);
    assert!(r.stderr.contains("msb-registry reindex"), "{}", r.stderr);
}

/// Every directory under `snapshots/` whose manifest.json is JSON, as
/// (digest of its manifest bytes → its files), one entry per copy.
fn json_snapshots(root: &Path) -> Vec<(Digest, BTreeMap<String, Digest>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.join("snapshots")) else {
        return out;
    };
    for e in entries {
        let dir = e.unwrap().path();
        let Ok(bytes) = std::fs::read(dir.join("manifest.json")) else {
            continue;
        };
        if serde_json::from_slice::<Value>(&bytes).is_ok() {
            out.push((Digest::of(&bytes), files_of(&dir)));
        }
    }
    out.sort();
    out
}

/// A tiny deterministic generator (xorshift64*): seeded, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn issue_22_random_operations_and_crashes_never_lose_a_snapshot_rm_did_not_name() {
    let seeds: u64 = std::env::var("MSB_PROPERTY_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    for seed in 1..=seeds {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let reg = Reg::new();
        let cache = reg.path("src-cache");
        let image = make_image_cache(&cache, "python:3.12", 3, &[4096]);
        let mut names: Vec<String> = Vec::new();
        let mut backup: Option<Vec<u8>> = None;
        // Manifests (by digest of their bytes) that may vanish: of snapshots
        // rm named (finished later by recovery when rm crashed), and of adds
        // that crashed mid-promotion (rolled back by the next open).
        let mut may_vanish: std::collections::HashSet<Digest> = Default::default();
        let manifest_of =
            |dir: &Path| std::fs::read(dir.join("manifest.json")).map(|b| Digest::of(&b));
        for step in 0..14 {
            let before = json_snapshots(&reg.root());
            let failpoints = [
                "promote.renamed",
                "rm.committed",
                "rename.committed",
                "gc.rows-deleted",
                "reindex.before-commit",
                "reindex.rebuilt",
            ];
            let env: Vec<(&str, String)> = if rng.below(3) == 0 {
                let p = failpoints[rng.below(failpoints.len() as u64) as usize];
                vec![("MSB_FAILPOINT", format!("{p}:abort"))]
            } else {
                vec![]
            };
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut removed_name: Option<String> = None;
            let op = rng.below(8);
            match op {
                0 | 1 => {
                    let name = format!("s{seed}-{step}");
                    let dir = reg.path(&format!("src/{name}"));
                    sample_dir(&dir, &image, &name);
                    let cache_s = cache.to_str().unwrap().to_string();
                    let args = [
                        "add",
                        dir.to_str().unwrap(),
                        "--name",
                        &name,
                        "--cache-dir",
                        &cache_s,
                    ];
                    if reg.run_env(&args, &env).code == 0 {
                        names.push(name);
                    } else {
                        may_vanish.extend(manifest_of(&dir));
                    }
                }
                2 if !names.is_empty() => {
                    let name = names.remove(rng.below(names.len() as u64) as usize);
                    may_vanish.extend(manifest_of(&reg.root().join("snapshots").join(&name)));
                    reg.run_env(&["rm", "--force", &name], &env);
                    removed_name = Some(name);
                }
                3 if !names.is_empty() => {
                    let i = rng.below(names.len() as u64) as usize;
                    let new = format!("{}-r", names[i]);
                    if reg.run_env(&["rename", &names[i], &new], &env).code == 0 {
                        names[i] = new;
                    }
                }
                4 => drop(reg.run_env(&["reindex"], &env)),
                5 => drop(reg.run_env(&["gc", "--grace", "0"], &env)),
                6 => {
                    // Back up registry.db, or restore the backup.
                    let db = reg.root().join("registry.db");
                    match backup.take() {
                        None => backup = std::fs::read(&db).ok(),
                        Some(bytes) => {
                            for side in ["-wal", "-shm"] {
                                let _ = std::fs::remove_file(
                                    reg.root().join(format!("registry.db{side}")),
                                );
                            }
                            std::fs::write(&db, bytes).unwrap();
                        }
                    }
                }
                _ => {
                    // microsandbox writes into the home: a snapshot of a
                    // newer schema, and work files.
                    let dir = reg.root().join(format!("snapshots/msb-{seed}-{step}"));
                    sample_dir(&dir, &image, "msb");
                    rewrite_manifest(&dir, |m| m["schema"] = 2.into());
                    let tmp = reg.root().join("cache/tmp");
                    std::fs::create_dir_all(&tmp).unwrap();
                    std::fs::write(tmp.join(format!("{step}.part")), b"x").unwrap();
                }
            }
            let after = json_snapshots(&reg.root());
            for copy in before.iter().filter(|c| !after.contains(c)) {
                assert!(
                    may_vanish.contains(&copy.0),
                    "seed {seed} step {step} op {op} {env:?} (rm {removed_name:?}): a snapshot was lost or altered"
                );
            }
        }
        // Whatever happened, one reindex makes the registry consistent.
        let _ = reg.run(&["reindex"]);
    }
}
