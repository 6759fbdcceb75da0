//! The chunk index (issue 14): chunk lists after add, import, reindex and an
//! upgrade from the schema before it; `du` against figures computed here
//! from the uppers' bytes; `verify --content` against a tampered row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;

use msb_registry::model::chunk::CHUNK_SIZE;
use msb_registry::model::digest::Digest;

use crate::reports::{DuReport, Usage};
use crate::util::{
    Reg, SnapSpec, chain_in_registry, logical_bytes, make_image_cache, make_snapshot,
};

/// (snapshot, path) → [(offset, length, digest)] as the index records them.
type Lists = BTreeMap<(String, String), Vec<(u64, u64, String)>>;

fn lists(reg: &Reg) -> Lists {
    let rows: Vec<serde_json::Map<String, serde_json::Value>> = reg.json(&[
        "sql",
        "SELECT l.snapshot, l.path, l.chunk_size, f.offset, c.length, c.digest \
         FROM chunk_lists l LEFT JOIN file_chunks f ON f.list = l.id \
         LEFT JOIN chunks c ON c.id = f.chunk ORDER BY l.snapshot, l.path, f.offset",
    ]);
    let mut out = Lists::new();
    for r in rows {
        assert_eq!(r["chunk_size"], CHUNK_SIZE);
        let list = out
            .entry((
                r["snapshot"].as_str().unwrap().into(),
                r["path"].as_str().unwrap().into(),
            ))
            .or_default();
        if let Some(offset) = r["offset"].as_u64() {
            list.push((
                offset,
                r["length"].as_u64().unwrap(),
                r["digest"].as_str().unwrap().into(),
            ));
        }
    }
    out
}

/// The chunk list of `bytes` by the definition: every CHUNK_SIZE piece at an
/// aligned offset that is not all zeros, named by its SHA-256.
fn expected_chunks(bytes: &[u8]) -> Vec<(u64, u64, String)> {
    bytes
        .chunks(CHUNK_SIZE as usize)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&b| b != 0))
        .map(|(i, c)| {
            (
                i as u64 * CHUNK_SIZE,
                c.len() as u64,
                Digest::of(c).to_string(),
            )
        })
        .collect()
}

/// Every file row of the registry has a chunk list, and each upper's and
/// manifest's list is the one its bytes give.
fn assert_lists_match_disk(reg: &Reg, names: &[&str]) -> Lists {
    let found = lists(reg);
    let files: Vec<serde_json::Map<String, serde_json::Value>> =
        reg.json(&["sql", "SELECT snapshot, path FROM snapshot_files"]);
    assert_eq!(found.len(), files.len(), "a file without a chunk list");
    for name in names {
        let show: serde_json::Value = reg.json(&["show", name]);
        let digest = show["digest"].as_str().unwrap().to_string();
        for file in ["upper.ext4", "manifest.json"] {
            let bytes = std::fs::read(reg.root().join("snapshots").join(name).join(file)).unwrap();
            assert_eq!(
                found[&(digest.clone(), file.to_string())],
                expected_chunks(&bytes),
                "{name}/{file}"
            );
        }
    }
    found
}

#[test]
fn chunk_lists_exist_after_add_import_and_reindex() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let names = ["base", "deps", "app"];
    let added = assert_lists_match_disk(&reg, &names);
    reg.run(&["verify", "--content"]).ok();

    let archive = reg.export_chain("app", "chain.tar.zst", &["--with-image"]);
    let other = Reg::new();
    other
        .run(&["import", archive.to_str().unwrap(), "--name", "app"])
        .ok();
    let imported = lists(&other);
    assert_eq!(imported, added, "import records the lists add did");
    other.run(&["verify", "--content"]).ok();

    std::fs::remove_file(reg.root().join("registry.db")).unwrap();
    for wal in ["registry.db-wal", "registry.db-shm"] {
        let _ = std::fs::remove_file(reg.root().join(wal));
    }
    let report: serde_json::Value = reg.json(&["reindex"]);
    assert_eq!(report["adopted_snapshots"].as_array().unwrap().len(), 3);
    assert_eq!(assert_lists_match_disk(&reg, &names), added);
    reg.run(&["verify", "--content"]).ok();
}

/// Put the registry's index back in the state the schema before V4 leaves:
/// no chunk tables, and refinery's history ending at V3.
fn downgrade_to_v3(reg: &Reg) {
    let conn = rusqlite::Connection::open(reg.root().join("registry.db")).unwrap();
    conn.execute_batch(
        "DROP TABLE signatures;
         DROP TABLE remote_chunks;
         DROP TABLE remote_blobs;
         DROP TRIGGER chunks_unreferenced;
         DROP TABLE file_chunks;
         DROP TABLE chunk_lists;
         DROP TABLE chunks;
         DROP TABLE pending_renames;
         DELETE FROM refinery_schema_history WHERE version >= 4;",
    )
    .unwrap();
    let version: i64 = conn
        .query_row(
            "SELECT max(version) FROM refinery_schema_history",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, 3);
}

#[test]
fn a_registry_from_before_the_chunk_index_is_backfilled_by_reindex() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let before = lists(&reg);
    downgrade_to_v3(&reg);

    let du: DuReport = reg.json(&["du"]);
    assert_eq!(du.unindexed, 3);
    assert!(du.snapshots.iter().all(|s| !s.indexed && s.data_bytes == 0));
    let out = reg.run(&["du"]).ok();
    assert!(out.stderr.contains("reindex"), "{}", out.stderr);
    let failed = reg.run(&["verify", "--content", "--json"]);
    assert_eq!(failed.code, 5, "{}", failed.stdout);
    let report: serde_json::Value = failed.json();
    let kinds: HashSet<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, HashSet::from(["chunks"]));

    let report: serde_json::Value = reg.json(&["reindex"]);
    assert_eq!(
        report["chunk_lists_backfilled"].as_array().unwrap().len(),
        3
    );
    assert!(report["adopted_snapshots"].as_array().unwrap().is_empty());
    assert_eq!(
        assert_lists_match_disk(&reg, &["base", "deps", "app"]),
        before
    );
    let du: DuReport = reg.json(&["du"]);
    assert_eq!(du.unindexed, 0);
    let again: serde_json::Value = reg.json(&["reindex"]);
    assert!(
        again["chunk_lists_backfilled"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    reg.run(&["verify", "--content"]).ok();
}

/// Chunk digest → length of an upper's data chunks, each distinct chunk once.
fn chunk_set(bytes: &[u8]) -> HashMap<String, u64> {
    expected_chunks(bytes)
        .into_iter()
        .map(|(_, len, d)| (d, len))
        .collect()
}

#[test]
fn du_matches_figures_computed_from_the_uppers() {
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("cache"), "python:3.12", 3, &[8192]);
    let c = CHUNK_SIZE as usize;
    let block = |seed: u8, len: usize| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    };
    // The parent: four chunks of data (two of them identical), a hole, and a
    // short last chunk.
    let mut parent = SnapSpec::new(&image);
    parent.len = (8 * c + 1000) as u64;
    parent.data = vec![
        (0, block(1, c)),
        (c as u64, block(2, c)),
        (2 * c as u64, block(3, c)),
        (5 * c as u64, block(1, c)),
        (8 * c as u64, block(4, 1000)),
    ];
    // The child: its parent with one 4 KiB block rewritten in chunk 1, chunk
    // 2 discarded (a hole now), and a new chunk at 6.
    let mut child = parent.clone();
    child.created_at = "2026-10-01T10:00:00Z".into();
    child.data.retain(|(off, _)| *off != 2 * c as u64);
    child.data.push((c as u64 + 8192, block(9, 4096)));
    child.data.push((6 * c as u64, block(5, c)));
    // A sibling sharing chunk 0 and chunk 1 with the parent, plus its own.
    let mut sibling = parent.clone();
    sibling.created_at = "2026-10-01T11:00:00Z".into();
    sibling.data = vec![
        (0, block(1, c)),
        (c as u64, block(2, c)),
        (3 * c as u64, block(7, 3 * 4096)),
    ];

    let p = make_snapshot(&reg.path("src/parent"), &parent);
    let child = child.parent(p);
    let sibling = sibling.parent(p);
    make_snapshot(&reg.path("src/child"), &child);
    make_snapshot(&reg.path("src/sibling"), &sibling);
    for name in ["parent", "child", "sibling"] {
        let dir = reg.path(&format!("src/{name}"));
        reg.run(&["add", dir.to_str().unwrap()]).ok();
    }

    // The expected figures, from the bytes alone.
    let specs = [
        ("parent", &parent),
        ("child", &child),
        ("sibling", &sibling),
    ];
    let sets: HashMap<&str, HashMap<String, u64>> = specs
        .iter()
        .map(|(n, s)| (*n, chunk_set(&logical_bytes(s))))
        .collect();
    let mut expected = BTreeMap::new();
    for (name, spec) in specs {
        let bytes = logical_bytes(spec);
        let mine = &sets[name];
        let manifest = std::fs::read(
            reg.root()
                .join("snapshots")
                .join(name)
                .join("manifest.json"),
        )
        .unwrap();
        let m_len = manifest.len() as u64;
        let others: HashSet<&String> = sets
            .iter()
            .filter(|(o, _)| **o != name)
            .flat_map(|(_, s)| s.keys())
            .collect();
        let unique: u64 = mine
            .iter()
            .filter(|(d, _)| !others.contains(d))
            .map(|(_, l)| l)
            .sum();
        let new: u64 = match name {
            "parent" => mine.values().sum(),
            _ => mine
                .iter()
                .filter(|(d, _)| !sets["parent"].contains_key(*d))
                .map(|(_, l)| l)
                .sum(),
        };
        let data: u64 = expected_chunks(&bytes).iter().map(|(_, l, _)| l).sum();
        let dir = reg.root().join("snapshots").join(name);
        let allocated: u64 = ["upper.ext4", "manifest.json"]
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).unwrap().blocks() * 512)
            .sum();
        // Each manifest is its own one-chunk file, unique to its snapshot.
        expected.insert(
            name.to_string(),
            (
                spec.len + m_len,
                data + m_len,
                unique + m_len,
                new + m_len,
                allocated,
            ),
        );
    }
    // The figures the data was built to show, in chunks (m: the manifest).
    // Parent: b1 b2 b3 . . b1 . . b4(short); child: b1 b2' . . . b1 b5 . b4;
    // sibling: b1 b2 . b7.
    let cu = CHUNK_SIZE;
    let m = |name: &str| expected[name].0 - specs.iter().find(|s| s.0 == name).unwrap().1.len;
    let (pm, cm, sm) = (m("parent"), m("child"), m("sibling"));
    assert_eq!(expected["parent"].1, 4 * cu + 1000 + pm, "parent data");
    assert_eq!(expected["parent"].2, cu + pm, "only the parent holds b3");
    assert_eq!(
        expected["parent"].3,
        3 * cu + 1000 + pm,
        "no parent: all distinct"
    );
    assert_eq!(expected["child"].1, 4 * cu + 1000 + cm, "child data");
    assert_eq!(
        expected["child"].2,
        2 * cu + cm,
        "b2' and b5 are the child's alone"
    );
    assert_eq!(expected["child"].3, 2 * cu + cm, "b2' and b5 are new");
    assert_eq!(expected["sibling"].2, cu + sm, "b7 is the sibling's alone");
    assert_eq!(expected["sibling"].3, cu + sm, "b7 is new");

    let du: DuReport = reg.json(&["du"]);
    assert_eq!(du.unindexed, 0);
    let found: BTreeMap<String, (u64, u64, u64, u64, u64)> = du
        .snapshots
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                (
                    s.logical_bytes,
                    s.data_bytes,
                    s.unique_bytes,
                    s.new_bytes,
                    s.rm_frees_bytes,
                ),
            )
        })
        .collect();
    assert_eq!(found, expected);
    assert!(du.snapshots.iter().all(|s| s.indexed));
    let child_row = du.snapshots.iter().find(|s| s.name == "child").unwrap();
    assert_eq!(child_row.parent, Some(p));

    let all: HashMap<&String, u64> = sets
        .values()
        .flat_map(|s| s.iter().map(|(d, l)| (d, *l)))
        .collect();
    let manifests: u64 =
        expected.values().map(|e| e.0).sum::<u64>() - specs.iter().map(|(_, s)| s.len).sum::<u64>();
    let t = &du.totals;
    assert_eq!(t.snapshots, 3);
    assert_eq!(t.logical_bytes, expected.values().map(|e| e.0).sum::<u64>());
    assert_eq!(t.data_bytes, expected.values().map(|e| e.1).sum::<u64>());
    assert_eq!(t.unique_chunk_bytes, all.values().sum::<u64>() + manifests);
    assert_eq!(t.unique_chunks, all.len() as u64 + 3);
    assert_eq!(
        t.allocated_bytes,
        expected.values().map(|e| e.4).sum::<u64>()
    );
    let ratio = t.data_bytes as f64 / t.unique_chunk_bytes as f64;
    assert!(
        (t.dedup_ratio - ratio).abs() < 1e-9 && ratio > 1.5,
        "{ratio}"
    );

    let one: DuReport = reg.json(&["du", "child"]);
    assert_eq!(one.snapshots.len(), 1);
    assert_eq!(&one.snapshots[0], child_row);
    reg.run(&["du", "nonesuch"]).fails(3, "nonesuch");

    // Removing the child drops the chunks only it held from the index.
    reg.run(&["rm", "child"]).ok();
    let remaining: HashSet<&String> = ["parent", "sibling"]
        .iter()
        .flat_map(|n| sets[n].keys())
        .collect();
    let chunks: Vec<serde_json::Map<String, serde_json::Value>> =
        reg.json(&["sql", "SELECT count(*) AS n FROM chunks"]);
    assert_eq!(remaining.len(), 5);
    assert_eq!(chunks[0]["n"], remaining.len() as u64 + 2);
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn verify_content_detects_a_tampered_chunk_row() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    reg.run(&["verify", "--content"]).ok();
    let conn = rusqlite::Connection::open(reg.root().join("registry.db")).unwrap();
    let (list, offset): (i64, i64) = conn
        .query_row(
            "SELECT f.list, f.offset FROM file_chunks f JOIN chunk_lists l ON l.id = f.list
             JOIN snapshots s ON s.digest = l.snapshot
             WHERE s.name = 'deps' AND l.path = 'upper.ext4' ORDER BY f.offset DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    conn.execute(
        "UPDATE file_chunks SET offset = offset + ?3 WHERE list = ?1 AND offset = ?2",
        rusqlite::params![list, offset, CHUNK_SIZE as i64],
    )
    .unwrap();
    drop(conn);
    // The quick verify compares sizes only; content re-hashing sees it.
    reg.run(&["verify"]).ok();
    let failed = reg.run(&["verify", "--content", "--json"]);
    assert_eq!(failed.code, 5, "{}", failed.stdout);
    let report: serde_json::Value = failed.json();
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["kind"], "chunks");
    assert_eq!(problems[0]["path"], "snapshots/deps/upper.ext4");
    assert!(
        problems[0]["detail"]
            .as_str()
            .unwrap()
            .contains(&offset.to_string()),
        "{}",
        problems[0]["detail"]
    );
}

#[test]
fn du_of_a_real_ext4_parent_and_child_matches_their_bytes() {
    use msb_registry::sample::ext4::{Round, make_child, make_upper, tools_available};
    use msb_registry::sample::{SnapshotSpec, write_manifest};
    if !tools_available() {
        eprintln!("skipping: mkfs.ext4 and debugfs are needed");
        return;
    }
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("cache"), "python:3.12", 5, &[8192]);
    let (pdir, cdir) = (reg.path("src/parent"), reg.path("src/child"));
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::create_dir_all(&cdir).unwrap();
    make_upper(&pdir.join("upper.ext4"), 64 << 20, &Round::new(11, 4, 20)).unwrap();
    let mut round = Round::new(12, 1, 10);
    round.rewrites = 5;
    make_child(
        &pdir.join("upper.ext4"),
        &cdir.join("upper.ext4"),
        &round,
        "r1",
    )
    .unwrap();
    let p = write_manifest(&pdir, &SnapshotSpec::new(&image)).unwrap();
    let mut child_spec = SnapshotSpec::new(&image).parent(p);
    child_spec.created_at = "2026-10-02T09:00:00Z".into();
    write_manifest(&cdir, &child_spec).unwrap();
    for dir in [&pdir, &cdir] {
        reg.run(&["add", dir.to_str().unwrap()]).ok();
    }

    // Chunk digest → length for each snapshot's files, from their bytes.
    let read = |name: &str, file: &str| {
        std::fs::read(reg.root().join("snapshots").join(name).join(file)).unwrap()
    };
    let data_of = |name: &str| -> u64 {
        ["upper.ext4", "manifest.json"]
            .iter()
            .flat_map(|f| expected_chunks(&read(name, f)))
            .map(|(_, l, _)| l)
            .sum()
    };
    let set_of = |name: &str| -> HashMap<String, u64> {
        let mut set = chunk_set(&read(name, "upper.ext4"));
        set.extend(chunk_set(&read(name, "manifest.json")));
        set
    };
    let (ps, cs) = (set_of("parent"), set_of("child"));
    let only = |a: &HashMap<String, u64>, b: &HashMap<String, u64>| -> u64 {
        a.iter()
            .filter(|(d, _)| !b.contains_key(*d))
            .map(|(_, l)| l)
            .sum()
    };
    let du: DuReport = reg.json(&["du"]);
    let by_name: HashMap<&str, &Usage> =
        du.snapshots.iter().map(|s| (s.name.as_str(), s)).collect();
    let (pu, cu) = (by_name["parent"], by_name["child"]);
    assert_eq!(pu.data_bytes, data_of("parent"));
    assert_eq!(cu.data_bytes, data_of("child"));
    assert_eq!(pu.unique_bytes, only(&ps, &cs));
    assert_eq!(cu.unique_bytes, only(&cs, &ps));
    assert_eq!(pu.new_bytes, ps.values().sum::<u64>());
    assert_eq!(cu.new_bytes, only(&cs, &ps));
    assert!(
        cu.new_bytes * 2 < cu.data_bytes,
        "the child shares most of its parent: new {} of {}",
        cu.new_bytes,
        cu.data_bytes
    );
    let distinct: HashSet<&String> = ps.keys().chain(cs.keys()).collect();
    assert_eq!(du.totals.unique_chunks, distinct.len() as u64);
    reg.run(&["verify", "--content"]).ok();
}
