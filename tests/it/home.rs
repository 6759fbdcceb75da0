//! Issue 16: sharing a microsandbox home. Homes are laid out the way
//! microsandbox writes them (DESIGN §9): `db/msb.db` with its image tables
//! and rows, `sandboxes/`, lock files (some held by a child process with
//! flock), `.part` files, `.work/` directories and `cache/tmp/`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use msb_registry::db::microsandbox::SCHEMA_FOR_TESTS;
use msb_registry::model::digest::Digest;
use msb_registry::model::image::{CacheFile, CacheKind, ImageMetadata};
use rusqlite::{Connection, params};
use serde_json::Value;

use crate::util::*;

fn rel(kind: CacheKind, key: Digest) -> String {
    format!("cache/{}", CacheFile { kind, key }.rel_path())
}

/// Every cache file an image owns, root-relative.
fn image_paths(image: &ImageMetadata, reference: &str) -> Vec<String> {
    let mut v = vec![
        format!(
            "cache/{}",
            CacheFile::metadata_for_ref(reference).rel_path()
        ),
        rel(CacheKind::Fsmeta, image.manifest_digest),
        rel(CacheKind::Vmdk, image.manifest_digest),
    ];
    v.extend(
        image
            .layers
            .iter()
            .map(|l| rel(CacheKind::Layers, l.diff_id)),
    );
    v
}

/// A process holding an exclusive flock on `path` (flock(1), the same
/// flock(2) microsandbox takes) until dropped.
struct Held(Child);

fn hold(path: &Path) -> Held {
    let mut child = Command::new("flock")
        .arg(path)
        .args(["sh", "-c", "echo held; exec cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held");
    Held(child)
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// The digest of every file under `db/`, to prove msb.db is never written.
fn db_bytes(root: &Path) -> BTreeMap<String, Digest> {
    std::fs::read_dir(root.join("db"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                Digest::of(&std::fs::read(e.path()).unwrap()),
            )
        })
        .collect()
}

/// A home: our snapshot `app` on python (also pulled by microsandbox);
/// alpine, whose last snapshot was removed but a sandbox runs on it;
/// busybox, used by nobody; a layer microsandbox pulled after our last
/// reindex; two layer files nobody references; microsandbox's work files.
struct Home {
    reg: Reg,
    python: ImageMetadata,
    alpine: ImageMetadata,
    busybox: ImageMetadata,
    pulled: String,
    debris_held: String,
    debris_free: String,
    not_ours: Vec<String>,
}

fn add_with_image(reg: &Reg, name: &str, reference: &str, seed: u8) -> ImageMetadata {
    let cache = reg.path(&format!("src-cache-{name}"));
    let image = make_image_cache(&cache, reference, seed, &[4096, 8192]);
    add_pinned(reg, name, &image, reference, &cache);
    image
}

fn home() -> Home {
    let reg = Reg::new();
    let python = add_with_image(&reg, "app", "python:3.12", 1);
    let alpine = add_with_image(&reg, "a", "alpine:3.20", 2);
    let busybox = add_with_image(&reg, "b", "busybox:1", 4);
    reg.run(&["rm", "a"]).ok();
    reg.run(&["rm", "b"]).ok();
    let root = reg.root();
    let layer_file = |seed: &[u8]| {
        let path = rel(CacheKind::Layers, Digest::of(seed));
        std::fs::write(root.join(&path), vec![seed[0]; 4096]).unwrap();
        path
    };
    let pulled = layer_file(b"pulled");
    let debris_held = layer_file(b"held");
    let debris_free = layer_file(b"free");

    let mut not_ours = vec![
        format!("{}.lock", rel(CacheKind::Fsmeta, python.manifest_digest)),
        format!("{}.lock", rel(CacheKind::Vmdk, busybox.manifest_digest)),
        format!("{debris_held}.lock"),
        format!("{pulled}.lock"),
        format!(
            "cache/{}.part",
            CacheFile::metadata_for_ref("node:22").rel_path()
        ),
        "cache/tmp/sha256_0123.part".into(),
        "cache/tmp/sha256_0123.download.lock".into(),
        "cache/tmp/sha256_0123.work/layer.tar".into(),
        format!("{}.work/partial", rel(CacheKind::Layers, Digest::of(b"w"))),
        "cache/layers/stray.tmp".into(),
        "snapshots/new-snap.part".into(),
        "sandboxes/web/upper.ext4".into(),
    ];
    for f in &not_ours {
        let path = root.join(f);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"microsandbox's").unwrap();
    }
    not_ours.sort();

    std::fs::create_dir_all(root.join("db")).unwrap();
    let conn = Connection::open(root.join("db/msb.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch(SCHEMA_FOR_TESTS).unwrap();
    let node = Digest::of(b"node manifest");
    for (id, digest) in [
        (1, python.manifest_digest),
        (2, alpine.manifest_digest),
        (3, node),
    ] {
        conn.execute(
            "INSERT INTO manifest (id, digest) VALUES (?1, ?2)",
            params![id, digest.to_string()],
        )
        .unwrap();
    }
    conn.execute_batch(
        "INSERT INTO image_ref (reference, manifest_id) VALUES
           ('docker.io/library/python:3.12', 1), ('docker.io/library/node:22', 3);
         INSERT INTO sandbox (id, name, config, status) VALUES (1, 'web', '{}', 'running');
         INSERT INTO sandbox_rootfs (sandbox_id, manifest_id, mode) VALUES (1, 2, 'oci');",
    )
    .unwrap();
    let layers = python
        .layers
        .iter()
        .map(|l| (1, l.diff_id))
        .chain(alpine.layers.iter().map(|l| (2, l.diff_id)))
        .chain([(3, Digest::of(b"pulled"))]);
    for (i, (manifest, diff_id)) in layers.enumerate() {
        conn.execute(
            "INSERT INTO layer (id, diff_id, blob_digest) VALUES (?1, ?2, ?3)",
            params![
                i + 1,
                diff_id.to_string(),
                Digest::of(&[i as u8]).to_string()
            ],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO manifest_layer (manifest_id, layer_id, position) VALUES (?1, ?2, ?3)",
            params![manifest, i + 1, i],
        )
        .unwrap();
    }
    drop(conn);
    Home {
        reg,
        python,
        alpine,
        busybox,
        pulled,
        debris_held,
        debris_free,
        not_ours,
    }
}

fn removed(r: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["kind"].as_str().unwrap().to_string(),
                x["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn kept(r: &Value) -> Vec<(String, String)> {
    r["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["path"].as_str().unwrap().to_string(),
                x["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn assert_all_exist(root: &Path, paths: &[String]) {
    for p in paths {
        assert!(root.join(p).exists(), "{p} was removed");
    }
}

#[test]
fn gc_keeps_what_microsandbox_uses_its_locks_and_its_work() {
    let h = home();
    let root = h.reg.root();
    let msb = db_bytes(&root);
    let held = hold(&root.join(format!("{}.lock", h.debris_held)));

    let v: Value = h.reg.json(&["verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["microsandbox"]["shared"], true);
    assert_eq!(v["microsandbox"]["msb_db"], "readable");
    let mut debris = vec![h.debris_free.clone(), h.debris_held.clone()];
    debris.sort();
    assert_eq!(strings(&v["debris"]), debris, "only nameable debris");
    let show: Value = h.reg.json(&["show", "app"]);
    assert_eq!(show["shared_home"], true);

    let dry: Value = h.reg.json(&["gc", "--dry-run", "--grace", "0"]);
    let mut expected: Vec<(String, String)> = vec![
        ("image".into(), h.busybox.manifest_digest.to_string()),
        ("debris".into(), h.debris_free.clone()),
    ];
    let busybox_files = image_paths(&h.busybox, "busybox:1");
    for (i, p) in busybox_files.iter().enumerate() {
        let kind = ["metadata", "fsmeta", "vmdk", "layer", "layer"][i];
        expected.push((kind.into(), p.clone()));
    }
    expected.sort();
    assert_eq!(removed(&dry), expected);
    let mut expected_kept = vec![
        (
            h.alpine.manifest_digest.to_string(),
            "microsandbox uses it (db/msb.db)".to_string(),
        ),
        (h.pulled.clone(), "microsandbox uses it (db/msb.db)".into()),
        (
            h.debris_held.clone(),
            "its .lock is held (microsandbox is materializing or using it)".into(),
        ),
    ];
    expected_kept.sort();
    assert_eq!(kept(&dry), expected_kept);
    assert_eq!(dry["microsandbox"]["msb_db"], "readable");
    // python (2 layers, fsmeta, vmdk, metadata of its ref), alpine (2 layers,
    // fsmeta, vmdk), node (fsmeta, vmdk, metadata, the pulled layer).
    assert_eq!(dry["microsandbox"]["in_use"], 13);
    let text = h.reg.run(&["gc", "--dry-run", "--grace", "0"]).ok().stdout;
    assert!(
        text.contains("shared microsandbox home: db/msb.db read"),
        "{text}"
    );

    let real: Value = h.reg.json(&["gc", "--grace", "0"]);
    assert_eq!(removed(&real), expected);
    assert_eq!(kept(&real), expected_kept);
    for (_, p) in expected.iter().filter(|(_, p)| p.contains('/')) {
        assert!(!root.join(p).exists(), "{p} is still there");
    }
    assert_all_exist(&root, &h.not_ours);
    assert_all_exist(&root, &image_paths(&h.alpine, "alpine:3.20"));
    assert_all_exist(&root, &image_paths(&h.python, "python:3.12"));
    assert_all_exist(&root, &[h.pulled.clone(), h.debris_held.clone()]);
    let images: Vec<Value> = h
        .reg
        .json(&["sql", "SELECT manifest_digest FROM images ORDER BY 1"]);
    assert_eq!(images.len(), 2, "python and alpine keep their rows");

    // Once microsandbox lets go of the lock, the unreferenced layer goes.
    drop(held);
    let after: Value = h.reg.json(&["gc", "--grace", "0"]);
    assert_eq!(
        removed(&after),
        [("debris".to_string(), h.debris_held.clone())]
    );
    assert!(root.join(format!("{}.lock", h.debris_held)).exists());
    assert_all_exist(&root, &h.not_ours);
    let v: Value = h.reg.json(&["verify", "--content"]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(strings(&v["debris"]).is_empty(), "{v}");
    assert_eq!(db_bytes(&root), msb, "msb.db changed");
}

#[test]
fn an_unusable_msb_db_keeps_every_cache_artifact() {
    let h = home();
    let root = h.reg.root();
    // A dead import: its staging and journal are ours and still go.
    let src = h.reg.path("src/dead");
    make_snapshot(&src, &SnapSpec::new(&h.python).label("dead", "yes"));
    let crashed = h.reg.run_env(
        &["add", src.to_str().unwrap()],
        &[("MSB_FAILPOINT", "lease.acquired:abort")],
    );
    assert_ne!(crashed.code, 0);

    let msb = root.join("db/msb.db");
    let good = std::fs::read(&msb).unwrap();
    let schemas: [(&str, &dyn Fn()); 3] = [
        ("unreadable", &|| {
            std::fs::write(&msb, vec![0x5a; 8192]).unwrap()
        }),
        ("unknown-schema", &|| {
            std::fs::remove_file(&msb).unwrap();
            Connection::open(&msb)
                .unwrap()
                .execute_batch("CREATE TABLE manifest (id integer, sha text);")
                .unwrap();
        }),
        ("absent", &|| {
            std::fs::remove_file(&msb).unwrap();
        }),
    ];
    let cache_before = cache_listing(&root);
    for (state, make) in schemas {
        make();
        let bytes_before = std::fs::read(&msb).ok();
        let dry: Value = h.reg.json(&["gc", "--dry-run", "--grace", "0"]);
        assert_eq!(dry["microsandbox"]["msb_db"], state, "{dry}");
        let detail = dry["microsandbox"]["detail"].as_str().unwrap();
        assert!(!detail.is_empty());
        let kinds: Vec<String> = removed(&dry).into_iter().map(|(k, _)| k).collect();
        assert!(
            kinds.iter().all(|k| k == "staging" || k == "journal"),
            "{state}: {kinds:?}"
        );
        assert!(
            kept(&dry)
                .iter()
                .any(|(p, _)| *p == h.busybox.manifest_digest.to_string()),
            "{dry}"
        );
        let text = h.reg.run(&["gc", "--dry-run", "--grace", "0"]).ok().stdout;
        assert!(text.contains("every cache artifact kept"), "{text}");
        assert_eq!(std::fs::read(&msb).ok(), bytes_before);
    }
    // sandboxes/ without db/msb.db: the real run removes only our staging
    // and journal.
    let real: Value = h.reg.json(&["gc", "--grace", "0"]);
    let kinds: Vec<String> = removed(&real).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["journal", "staging", "staging"], "{real}");
    assert_eq!(cache_listing(&root), cache_before);
    assert_eq!(std::fs::read_dir(root.join("staging")).unwrap().count(), 0);

    // The override sweeps the cache as if microsandbox used nothing, loudly.
    std::fs::write(&msb, vec![0x5a; 8192]).unwrap();
    let run = h
        .reg
        .run(&[
            "gc",
            "--unsafe-ignore-unreadable-msb-db",
            "--grace",
            "0",
            "--json",
        ])
        .ok();
    assert!(
        run.stderr
            .contains("warning: --unsafe-ignore-unreadable-msb-db"),
        "{}",
        run.stderr
    );
    let r: Value = run.json();
    assert_eq!(r["microsandbox"]["overridden"], true);
    let gone: Vec<String> = removed(&r).into_iter().map(|(_, p)| p).collect();
    assert!(gone.contains(&h.alpine.manifest_digest.to_string()), "{r}");
    assert!(gone.contains(&h.pulled), "{r}");
    assert_all_exist(&root, &h.not_ours);
    std::fs::write(&msb, good).unwrap();
    let v: Value = h.reg.json(&["verify", "--content"]);
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn issue_22_values_in_msb_db_gc_cannot_interpret_keep_every_cache_artifact() {
    let h = home();
    let root = h.reg.root();
    let alpine = h.alpine.manifest_digest.to_string();
    let cache_before = cache_listing(&root);
    let writes: [(&str, String); 3] = [
        (
            "bare digest",
            alpine.trim_start_matches("sha256:").to_string(),
        ),
        (
            "upper case",
            alpine.to_uppercase().replace("SHA256:", "sha256:"),
        ),
        ("layer diff_id", "sha256:xyz".to_string()),
    ];
    for (what, value) in writes {
        let conn = Connection::open(root.join("db/msb.db")).unwrap();
        if what == "layer diff_id" {
            conn.execute("UPDATE layer SET diff_id = ?1 WHERE id = 1", [&value])
                .unwrap();
        } else {
            conn.execute("UPDATE manifest SET digest = ?1 WHERE id = 2", [&value])
                .unwrap();
        }
        drop(conn);
        let dry: Value = h.reg.json(&["gc", "--dry-run", "--grace", "0"]);
        assert_eq!(
            dry["microsandbox"]["msb_db"], "unknown-schema",
            "{what}: {dry}"
        );
        let detail = dry["microsandbox"]["detail"].as_str().unwrap();
        assert!(detail.contains("cannot interpret"), "{what}: {detail}");
        let real: Value = h.reg.json(&["gc", "--grace", "0"]);
        assert!(removed(&real).is_empty(), "{what}: {real}");
        assert!(
            kept(&real).iter().any(|(p, _)| *p == alpine),
            "{what}: {real}"
        );
        assert_eq!(cache_listing(&root), cache_before, "{what}");
        let conn = Connection::open(root.join("db/msb.db")).unwrap();
        conn.execute("UPDATE manifest SET digest = ?1 WHERE id = 2", [&alpine])
            .unwrap();
        conn.execute(
            "UPDATE layer SET diff_id = ?1 WHERE id = 1",
            [h.python.layers[0].diff_id.to_string()],
        )
        .unwrap();
    }
}

/// `(digest, name, artifact_path, child_count)` of every row of msb.db's
/// `snapshot_index`.
fn snapshot_index(root: &Path) -> Vec<(String, String, String, i64)> {
    let conn = Connection::open(root.join("db/msb.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT digest, name, artifact_path, child_count FROM snapshot_index ORDER BY digest",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[test]
fn issue_22_rm_and_rename_keep_microsandboxs_snapshot_index_consistent() {
    let h = home();
    let root = h.reg.root();
    let base: Value = h.reg.json(&["show", "app"]);
    let base_digest = base["digest"].as_str().unwrap().to_string();
    let child = h.reg.path("src/child");
    let child_digest = make_snapshot(
        &child,
        &SnapSpec::new(&h.python)
            .label("child", "1")
            .parent(base_digest.parse().unwrap()),
    )
    .to_string();
    h.reg
        .run(&["add", child.to_str().unwrap(), "--name", "child"])
        .ok();
    // microsandbox's reindex has indexed both, by their real paths.
    let snapshots = root.join("snapshots").canonicalize().unwrap();
    let conn = Connection::open(root.join("db/msb.db")).unwrap();
    for (digest, name, parent, children) in [
        (&base_digest, "app", None, 1),
        (&child_digest, "child", Some(&base_digest), 0),
    ] {
        conn.execute(
            "INSERT INTO snapshot_index (digest, name, parent_digest, format, fstype,
               artifact_path, created_at, indexed_at, child_count)
             VALUES (?1, ?2, ?3, 'raw', 'ext4', ?4, '2026-10-01T09:00:00Z', '2026-10-01T09:00:00Z', ?5)",
            params![digest, name, parent, snapshots.join(name).to_string_lossy(), children],
        )
        .unwrap();
    }
    drop(conn);

    let renamed = h.reg.run(&["rename", "child", "kid"]).ok();
    assert!(!renamed.stderr.contains("hint:"), "{}", renamed.stderr);
    let kid_path = snapshots.join("kid").to_string_lossy().into_owned();
    assert!(
        snapshot_index(&root).contains(&(child_digest.clone(), "kid".into(), kid_path.clone(), 0)),
        "{:?}",
        snapshot_index(&root)
    );
    let rm = h.reg.run(&["rm", "--force", "app"]).ok();
    assert!(!rm.stderr.contains("hint:"), "{}", rm.stderr);
    assert_eq!(
        snapshot_index(&root),
        [(child_digest.clone(), "kid".into(), kid_path, 0)]
    );
    // Nothing else in msb.db was written.
    let conn = Connection::open(root.join("db/msb.db")).unwrap();
    let manifests: i64 = conn
        .query_row("SELECT count(*) FROM manifest", [], |r| r.get(0))
        .unwrap();
    assert_eq!(manifests, 3);
    drop(conn);
    // A msb.db that cannot be written: our rm still works, and says what to run.
    let kid: Value = h.reg.json(&["show", "kid"]);
    assert_eq!(kid["digest"], child_digest.as_str());
    let msb = root.join("db/msb.db");
    let conn = Connection::open(&msb).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let rm = h.reg.run_env(&["rm", "kid"], &[]).ok();
    assert!(
        rm.stderr
            .contains(&format!("msb snapshot rm {child_digest}")),
        "{}",
        rm.stderr
    );
    conn.execute_batch("ROLLBACK").unwrap();
    let v: Value = h.reg.json(&["verify", "--content"]);
    assert_eq!(v["ok"], true, "{v}");
}

fn cache_listing(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root.join("cache"), &mut out);
    out.sort();
    out
}

/// A microsandbox process writing msb.db: a committed sandbox row that
/// lives only in the `-wal` (no checkpoint yet) and an open write
/// transaction. gc reads the committed state without waiting, and the
/// writer commits afterwards.
#[test]
fn gc_reads_msb_db_while_microsandbox_writes_it() {
    let h = home();
    let root = h.reg.root();
    let script = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA wal_autocheckpoint=0")
db.execute("INSERT INTO manifest (id, digest) VALUES (4, ?)", (sys.argv[2],))
db.execute("INSERT INTO sandbox (id, name, config, status) VALUES (2, 'box', '{}', 'running')")
db.execute("INSERT INTO sandbox_rootfs (sandbox_id, manifest_id, mode) VALUES (2, 4, 'oci')")
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO image_ref (reference, manifest_id) VALUES ('docker.io/library/busybox:1', 4)")
print("writing", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
print("committed", flush=True)
"#;
    let mut writer = Command::new("python3")
        .args(["-c", script])
        .arg(root.join("db/msb.db"))
        .arg(h.busybox.manifest_digest.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(writer.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "writing");
    let main_file = std::fs::read(root.join("db/msb.db")).unwrap();
    let wal = std::fs::read(root.join("db/msb.db-wal")).unwrap();
    assert!(!wal.is_empty(), "the committed row lives in the -wal");

    let r: Value = h.reg.json(&["gc", "--grace", "0"]);
    let gone: Vec<String> = removed(&r).into_iter().map(|(_, p)| p).collect();
    let mut debris = vec![h.debris_free.clone(), h.debris_held.clone()];
    debris.sort();
    assert_eq!(gone, debris, "{r}");
    assert!(kept(&r).contains(&(
        h.busybox.manifest_digest.to_string(),
        "microsandbox uses it (db/msb.db)".into()
    )));
    assert_all_exist(&root, &image_paths(&h.busybox, "busybox:1"));
    assert_eq!(std::fs::read(root.join("db/msb.db")).unwrap(), main_file);
    assert_eq!(std::fs::read(root.join("db/msb.db-wal")).unwrap(), wal);

    writeln!(writer.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "committed");
    assert!(writer.wait().unwrap().success());
    let v: Value = h.reg.json(&["verify", "--content"]);
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn import_add_and_rm_in_a_shared_home_hint_at_msb_reindex() {
    let plain = Reg::new();
    add_with_image(&plain, "solo", "debian:12", 9);
    let archive = plain.path("solo.tar.zst");
    plain
        .run(&[
            "export",
            "solo",
            "--with-image",
            "-o",
            archive.to_str().unwrap(),
        ])
        .ok();
    let r = plain.run(&["rm", "solo", "--json"]).ok();
    assert!(!r.stderr.contains("hint"), "{}", r.stderr);
    assert_eq!(r.json::<Value>()["microsandbox_hint"], Value::Null);

    let h = home();
    let root = h.reg.root();
    let msb = db_bytes(&root);
    let run = h
        .reg
        .run(&["import", archive.to_str().unwrap(), "--json"])
        .ok();
    let hint_lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("hint:"))
        .collect();
    assert_eq!(hint_lines.len(), 1, "{}", run.stderr);
    assert!(hint_lines[0].contains("msb snapshot reindex"));
    let j: Value = run.json();
    assert!(
        j["microsandbox_hint"]
            .as_str()
            .unwrap()
            .contains("msb snapshot reindex")
    );
    // The same archive again changes nothing: no hint.
    let again = h.reg.run(&["import", archive.to_str().unwrap()]).ok();
    assert!(!again.stderr.contains("hint"), "{}", again.stderr);
    // microsandbox's index has no row for app: nothing to update, no hint.
    let rm = h.reg.run(&["rm", "app"]).ok();
    assert!(!rm.stderr.contains("hint:"), "{}", rm.stderr);
    let src = h.reg.path("src/extra");
    make_snapshot(&src, &SnapSpec::new(&h.python).label("extra", "1"));
    let add = h.reg.run(&["add", src.to_str().unwrap(), "--json"]).ok();
    assert!(
        add.stderr.contains("msb snapshot reindex"),
        "{}",
        add.stderr
    );
    assert_eq!(db_bytes(&root), msb, "msb.db changed");
    let v: Value = h.reg.json(&["verify", "--content"]);
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn reindex_in_a_shared_home_adopts_only_complete_unlocked_artifacts() {
    let h = home();
    let root = h.reg.root();
    let python_layer = rel(CacheKind::Layers, h.python.layers[0].diff_id);
    let held = hold(&root.join(format!("{python_layer}.lock")));
    for f in ["registry.db", "registry.db-wal", "registry.db-shm"] {
        let _ = std::fs::remove_file(root.join(f));
    }
    let r: Value = h.reg.json(&["reindex"]);
    let skipped: Vec<(String, String)> = r["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["path"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        skipped.contains(&(
            python_layer.clone(),
            "its .lock is held (microsandbox is materializing or using it)".into()
        )),
        "{skipped:?}"
    );
    for (p, _) in &skipped {
        assert!(
            !p.ends_with(".lock") && !p.ends_with(".part") && !p.ends_with(".work"),
            "{p} is not ours and is not reported"
        );
    }
    let adopted = strings(&r["adopted_cache_files"]);
    assert!(!adopted.iter().any(|p| p.contains(".part")));
    assert!(!adopted.contains(&python_layer["cache/".len()..].to_string()));
    assert!(adopted.contains(&h.pulled["cache/".len()..].to_string()));
    drop(held);
    let again: Value = h.reg.json(&["reindex"]);
    assert_eq!(
        strings(&again["adopted_cache_files"]),
        [python_layer["cache/".len()..].to_string()]
    );
    assert_all_exist(&root, &h.not_ours);
    let v: Value = h.reg.json(&["verify", "--content"]);
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn a_held_lock_keeps_an_unused_image_whole_until_it_is_free() {
    let h = home();
    let root = h.reg.root();
    let layer = rel(CacheKind::Layers, h.busybox.layers[1].diff_id);
    let held = hold(&root.join(format!("{layer}.lock")));
    let r: Value = h.reg.json(&["gc", "--grace", "0"]);
    assert!(
        !removed(&r)
            .iter()
            .any(|(k, p)| k == "image" || p.contains(&h.busybox.manifest_digest.hex()[..]))
    );
    assert!(kept(&r).contains(&(
        h.busybox.manifest_digest.to_string(),
        "its .lock is held (microsandbox is materializing or using it)".into()
    )));
    assert_all_exist(&root, &image_paths(&h.busybox, "busybox:1"));
    let v: Value = h.reg.json(&["verify", "--content"]);
    assert_eq!(v["ok"], true, "a kept image keeps its rows: {v}");

    drop(held);
    let r: Value = h.reg.json(&["gc", "--grace", "0"]);
    let gone: Vec<String> = removed(&r).into_iter().map(|(_, p)| p).collect();
    for p in image_paths(&h.busybox, "busybox:1") {
        assert!(gone.contains(&p), "{p} not removed: {r}");
        assert!(!root.join(&p).exists());
    }
    assert!(root.join(format!("{layer}.lock")).exists());
    let v: Value = h.reg.json(&["verify", "--content"]);
    assert_eq!(v["ok"], true, "{v}");
}

/// Issue 22: a microsandbox that died left a `-wal` holding committed rows
/// and no `-shm`. gc reads those rows (the image they pin is kept) and
/// creates nothing beside msb.db.
#[test]
fn gc_reads_a_dead_microsandboxs_wal_without_creating_side_files() {
    let h = home();
    let root = h.reg.root();
    let db = root.join("db/msb.db");
    let script = r#"
import sqlite3, sys, os
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA wal_autocheckpoint=0")
db.execute("INSERT INTO manifest (id, digest) VALUES (4, ?)", (sys.argv[2],))
db.execute("INSERT INTO image_ref (reference, manifest_id) VALUES ('docker.io/library/busybox:1', 4)")
os._exit(0)
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(&db)
        .arg(h.busybox.manifest_digest.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let shm = root.join("db/msb.db-shm");
    std::fs::remove_file(&shm).unwrap();
    let main_file = std::fs::read(&db).unwrap();
    let wal = std::fs::read(root.join("db/msb.db-wal")).unwrap();
    assert!(!wal.is_empty(), "the committed rows live in the -wal");

    let r: Value = h.reg.json(&["gc", "--grace", "0"]);
    assert!(
        kept(&r).contains(&(
            h.busybox.manifest_digest.to_string(),
            "microsandbox uses it (db/msb.db)".into()
        )),
        "{r}"
    );
    assert_all_exist(&root, &image_paths(&h.busybox, "busybox:1"));
    assert!(!shm.exists(), "gc created {}", shm.display());
    assert_eq!(std::fs::read(&db).unwrap(), main_file);
    assert_eq!(std::fs::read(root.join("db/msb.db-wal")).unwrap(), wal);
}
