//! Registry core through the binary: add, list, show, lineage, sql, rm, reindex.

use msb_registry::model::digest::Digest;

use crate::reports::{AddReport, LineageEntry, ListEntry};
use crate::util::*;

#[test]
fn add_list_show_lineage() {
    let reg = Reg::new();
    let (d, image) = chain_in_registry(&reg);
    let list: Vec<ListEntry> = reg.json(&["list"]);
    let names: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["app", "deps", "base"], "newest first");
    assert_eq!(list[0].parent, Some(d[1]));
    assert_eq!(list[2].parent, None);
    assert!(list.iter().all(|e| !e.shallow));
    assert_eq!(list[0].image_manifest_digest, image.manifest_digest);
    assert_eq!(list[0].image_ref, "python:3.12");
    assert_eq!(list[0].size_bytes, 8 << 20);
    assert_eq!(list[0].labels["stage"], "app");

    // Human lineage: a header, then one aligned row per ancestor, root first.
    let text = reg.run(&["lineage", "app"]).ok().stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("DEPTH  NAME  DIGEST"), "{text}");
    let column = lines[0].find("DIGEST").unwrap();
    for (line, (depth, name, digest)) in
        lines[1..]
            .iter()
            .zip([(2, "base", d[0]), (1, "deps", d[1]), (0, "app", d[2])])
    {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells, [depth.to_string(), name.into(), digest.to_string()]);
        assert_eq!(line.find("sha256:"), Some(column), "{text}");
    }
    assert_eq!(list[0].created_at, "2026-10-01T09:02:00Z");

    let lineage: Vec<LineageEntry> = reg.json(&["lineage", "app"]);
    assert_eq!(
        lineage,
        vec![
            LineageEntry {
                digest: d[0],
                name: Some("base".into()),
                depth: 2,
                missing: false
            },
            LineageEntry {
                digest: d[1],
                name: Some("deps".into()),
                depth: 1,
                missing: false
            },
            LineageEntry {
                digest: d[2],
                name: Some("app".into()),
                depth: 0,
                missing: false
            },
        ]
    );
    let down: Vec<LineageEntry> = reg.json(&["lineage", "base", "--descendants"]);
    assert_eq!(down.iter().map(|e| e.digest).collect::<Vec<_>>(), d);

    let show: serde_json::Value = reg.json(&["show", &d[1].hex()[..12]]);
    assert_eq!(show["name"], "deps");
    assert_eq!(show["children"], 1);
    assert_eq!(show["image_cached"], true);
    assert_eq!(show["files"].as_array().unwrap().len(), 2);
    let show_full: serde_json::Value = reg.json(&["show", &d[1].to_string()]);
    assert_eq!(show_full["digest"], d[1].to_string());
    let with_prefix: serde_json::Value =
        reg.json(&["show", &format!("sha256:{}", &d[1].hex()[..8])]);
    assert_eq!(with_prefix["name"], "deps");
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn add_is_idempotent_and_name_conflicts_exit_4() {
    let reg = Reg::new();
    let cache = reg.path("cache");
    let image = make_image_cache(&cache, "python:3.12", 1, &[4096]);
    let a = reg.path("a");
    let da = make_snapshot(&a, &SnapSpec::new(&image));
    let first: AddReport = reg.json(&[
        "add",
        a.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert_eq!(first.digest, da);
    assert_eq!(first.name, "a");
    assert!(!first.already_present);
    assert_eq!(first.files, 2);
    assert_eq!(first.cache_files_installed, 4);
    let before = (reg.tree(), reg.dump());
    let again: AddReport = reg.json(&[
        "add",
        a.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(again.already_present);
    assert_eq!(again.cache_files_skipped, 4);
    assert_eq!((reg.tree(), reg.dump()), before);

    let b = reg.path("b");
    make_snapshot(&b, &SnapSpec::new(&image).label("x", "y"));
    reg.run(&["add", b.to_str().unwrap(), "--name", "a"])
        .fails(4, "conflict: snapshot name a: already names");
    assert_eq!((reg.tree(), reg.dump()), before);
}

#[test]
fn add_refuses_bad_artifacts_and_changes_nothing() {
    let reg = Reg::new();
    let cache = reg.path("cache");
    let image = make_image_cache(&cache, "python:3.12", 1, &[4096]);
    reg.run(&["gc"]).ok();
    let before = (reg.tree(), reg.dump());

    let wrong_integrity = reg.path("bad1");
    make_snapshot(&wrong_integrity, &SnapSpec::new(&image));
    std::fs::OpenOptions::new()
        .write(true)
        .open(wrong_integrity.join("upper.ext4"))
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"X", 5))
        .unwrap();
    reg.run(&["add", wrong_integrity.to_str().unwrap()])
        .fails(5, "msb-sparse-sha256-v1 integrity is sha256:");

    let wrong_size = reg.path("bad2");
    make_snapshot(&wrong_size, &SnapSpec::new(&image));
    std::fs::OpenOptions::new()
        .write(true)
        .open(wrong_size.join("upper.ext4"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    reg.run(&["add", wrong_size.to_str().unwrap()])
        .fails(5, "size is 4096 bytes, manifest records 8388608");

    let bad_manifest = reg.path("bad3");
    make_snapshot(&bad_manifest, &SnapSpec::new(&image));
    let text = std::fs::read_to_string(bad_manifest.join("manifest.json")).unwrap();
    std::fs::write(
        bad_manifest.join("manifest.json"),
        text.replace("\"schema\":1", "\"schema\":1,\"extra\":true"),
    )
    .unwrap();
    reg.run(&["add", bad_manifest.to_str().unwrap()])
        .fails(5, "unknown field `extra`");

    let no_upper = reg.path("bad4");
    make_snapshot(&no_upper, &SnapSpec::new(&image));
    std::fs::remove_file(no_upper.join("upper.ext4")).unwrap();
    reg.run(&["add", no_upper.to_str().unwrap()])
        .fails(3, "upper file not found");

    let misaligned = reg.path("cache2");
    let image2 = make_image_cache(&misaligned, "python:3.12", 2, &[4096]);
    let f = misaligned.join(
        msb_registry::model::image::CacheFile {
            kind: msb_registry::model::image::CacheKind::Fsmeta,
            key: image2.manifest_digest,
        }
        .rel_path(),
    );
    std::fs::write(&f, vec![1u8; 5000]).unwrap();
    let ok_snap = reg.path("ok");
    make_snapshot(&ok_snap, &SnapSpec::new(&image2));
    reg.run(&[
        "add",
        ok_snap.to_str().unwrap(),
        "--cache-dir",
        misaligned.to_str().unwrap(),
    ])
    .fails(5, "is not a non-empty multiple of 4096");

    assert_eq!((reg.tree(), reg.dump()), before);
    let staging = std::fs::read_dir(reg.root().join("staging"))
        .unwrap()
        .count();
    assert_eq!(staging, 0, "no staging left behind");
}

#[test]
fn sparse_uppers_stay_sparse() {
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("cache"), "python:3.12", 1, &[4096]);
    let mut spec = SnapSpec::new(&image);
    spec.len = 4 << 30;
    spec.integrity = None;
    let dir = reg.path("big");
    make_snapshot(&dir, &spec);
    reg.run(&["add", dir.to_str().unwrap()]).ok();
    let upper = reg.root().join("snapshots/big/upper.ext4");
    let meta = std::fs::metadata(&upper).unwrap();
    assert_eq!(meta.len(), 4 << 30);
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "allocated {} bytes",
        meta.blocks() * 512
    );
}

#[test]
fn references_resolve_and_fail_clearly() {
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("cache"), "python:3.12", 1, &[4096]);
    // Make two snapshots whose digests share a first hex digit, to test ambiguity.
    let mut digests: Vec<Digest> = Vec::new();
    let mut i = 0;
    while digests.len() < 2 || digests[0].hex()[..1] != digests[1].hex()[..1] {
        let dir = reg.path(&format!("s{i}"));
        let d = make_snapshot(&dir, &SnapSpec::new(&image).label("i", &i.to_string()));
        reg.run(&["add", dir.to_str().unwrap()]).ok();
        if digests.is_empty() || d.hex()[..1] == digests[0].hex()[..1] {
            digests.push(d);
        }
        i += 1;
    }
    reg.run(&["show", "nope"])
        .fails(3, "snapshot not found: nope");
    reg.run(&["show", "0000000000"])
        .fails(3, "snapshot not found");
    for short in [&digests[0].hex()[..1], &digests[0].hex()[..7]] {
        reg.run(&["show", short]).fails(
            3,
            &format!("snapshot not found: {short} (no snapshot has that name, and a digest prefix needs at least 8 hex digits)"),
        );
    }
    let common: String = digests[0]
        .hex()
        .chars()
        .zip(digests[1].hex().chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    if common.len() >= 8 {
        reg.run(&["show", &common]).fails(2, "is ambiguous");
    }
}

#[test]
fn shallow_parents_and_missing_ancestors() {
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("cache"), "python:3.12", 1, &[4096]);
    let absent = Digest::of(b"not here");
    let dir = reg.path("child");
    let d = make_snapshot(&dir, &SnapSpec::new(&image).parent(absent));
    reg.run(&["add", dir.to_str().unwrap()]).ok();
    let list: Vec<ListEntry> = reg.json(&["list"]);
    assert!(list[0].shallow);
    let lineage: Vec<LineageEntry> = reg.json(&["lineage", "child"]);
    assert_eq!(
        lineage,
        vec![
            LineageEntry {
                digest: absent,
                name: None,
                depth: 1,
                missing: true
            },
            LineageEntry {
                digest: d,
                name: Some("child".into()),
                depth: 0,
                missing: false
            },
        ]
    );
}

#[test]
fn sql_is_read_only_and_answers_lineage_queries() {
    let reg = Reg::new();
    let (d, image) = chain_in_registry(&reg);
    let rows: Vec<serde_json::Map<String, serde_json::Value>> = reg.json(&[
        "sql",
        "WITH RECURSIVE a(digest, depth) AS (SELECT digest, 0 FROM snapshots WHERE name = 'app' \
         UNION ALL SELECT s.parent, a.depth + 1 FROM a JOIN snapshots s ON s.digest = a.digest WHERE s.parent IS NOT NULL) \
         SELECT a.depth, s.name FROM a JOIN snapshots s USING (digest) ORDER BY a.depth DESC",
    ]);
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["base", "deps", "app"]);
    assert_eq!(rows[0]["depth"], 2);
    let pinned: Vec<serde_json::Map<String, serde_json::Value>> = reg.json(&[
        "sql",
        &format!(
            "SELECT count(*) AS n FROM snapshots WHERE image_manifest_digest = '{}'",
            image.manifest_digest
        ),
    ]);
    assert_eq!(pinned[0]["n"], 3);
    let before = reg.dump();
    for write in [
        "DELETE FROM snapshots",
        "DROP TABLE snapshots",
        "INSERT INTO images VALUES ('a','b','c','d')",
        "PRAGMA journal_mode=DELETE",
    ] {
        reg.run(&["sql", write]).fails(2, "sql: ");
    }
    reg.run(&["sql", "DELETE FROM snapshots"])
        .fails(2, "read-only");
    reg.run(&["sql", "SELEC nonsense"]).fails(
        2,
        "error: sql: invalid query: near \"SELEC\": syntax error (at offset 0)",
    );
    reg.run(&["sql", "SELECT * FROM nope"])
        .fails(2, "error: sql: invalid query: no such table: nope");
    reg.run(&["sql", "SELECT 1; DELETE FROM snapshots"]).fails(
        2,
        "error: sql: invalid query: give one statement, not several",
    );
    assert_eq!(reg.dump(), before);
    assert_eq!(d.len(), 3);
}

#[test]
fn rm_refuses_parents_unless_forced() {
    let reg = Reg::new();
    let (d, _) = chain_in_registry(&reg);
    let before = (reg.tree(), reg.dump());
    reg.run(&["rm", "deps"]).fails(4, "has 1 child snapshot");
    assert_eq!((reg.tree(), reg.dump()), before);
    reg.run(&["rm", "app"]).ok();
    assert!(!reg.root().join("snapshots/app").exists());
    reg.run(&["rm", "deps", "--force"]).ok();
    reg.run(&["rm", "deps"])
        .fails(3, "snapshot not found: deps");
    let list: Vec<ListEntry> = reg.json(&["list"]);
    assert_eq!(
        list.iter().map(|e| e.digest).collect::<Vec<_>>(),
        vec![d[0]]
    );
}

#[test]
fn reindex_rebuilds_a_lost_database() {
    let reg = Reg::new();
    let (d, image) = chain_in_registry(&reg);
    let before = reg.dump();
    for f in ["registry.db", "registry.db-wal", "registry.db-shm"] {
        let _ = std::fs::remove_file(reg.root().join(f));
    }
    std::fs::create_dir_all(reg.root().join("snapshots/.junk")).unwrap();
    let report: serde_json::Value = reg.json(&["reindex"]);
    assert_eq!(report["adopted_snapshots"].as_array().unwrap().len(), 3);
    assert_eq!(report["adopted_cache_files"].as_array().unwrap().len(), 5);
    assert_eq!(
        report["adopted_images"][0],
        image.manifest_digest.to_string()
    );
    assert_eq!(report["skipped"][0]["path"], "snapshots/.junk");
    let lineage: Vec<LineageEntry> = reg.json(&["lineage", "app"]);
    assert_eq!(lineage.iter().map(|e| e.digest).collect::<Vec<_>>(), d);
    // Same rows as before, ignoring the time each entered the registry.
    let strip = |s: &str| {
        s.lines()
            .map(|l| l.rsplit_once('|').map_or(l, |(a, _)| a).to_string())
            .collect::<Vec<_>>()
            .len()
    };
    assert_eq!(strip(&reg.dump()), strip(&before));
}

#[test]
fn fixture_directories_add_with_their_cache() {
    let Some(fixtures) = fixtures() else { return };
    let reg = Reg::new();
    let x = reg.path("x");
    std::fs::create_dir_all(&x).unwrap();
    let ok = std::process::Command::new("tar")
        .arg("-xf")
        .arg(fixtures.join("seed-save-single.tar"))
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(ok.success());
    let r: AddReport = reg.json(&[
        "add",
        x.join("sha256-568b10e497e962ed").to_str().unwrap(),
        "--name",
        "tiny",
    ]);
    assert_eq!(
        r.digest.to_string(),
        "sha256:568b10e497e962ed6382eff917cdd22c70a89d9efd091c5289ca869ea523e167"
    );
}

#[test]
fn usage_errors_are_one_line_with_exit_2() {
    let reg = Reg::new();
    reg.run(&["export", "app", "--level", "25", "-o", "x"])
        .fails(
            2,
            "error: invalid value '25' for '--level <N>': 25 is not in 1..=19; see --help",
        );
    reg.run(&["export", "app"]).fails(
        2,
        "error: the following required arguments were not provided: --output <FILE|->; see --help",
    );
    reg.run(&["--frob", "list"])
        .fails(2, "error: unexpected argument '--frob' found; see --help");
    reg.run(&["nosuch"])
        .fails(2, "error: unrecognized subcommand 'nosuch'; see --help");
    let help = reg.run(&["import", "--help"]).ok();
    assert!(
        help.stdout.contains("Usage: msb-registry import"),
        "{}",
        help.stdout
    );
}
