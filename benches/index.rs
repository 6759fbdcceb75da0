//! Index scale benchmark (issue 2): builds, through the library, a registry
//! index of 100,000 snapshots including one 10,000-deep chain, then times
//! the read paths users hit at fleet scale. Prints medians; asserts nothing.
//!
//! Run: `cargo bench --bench index` (MSB_BENCH_SNAPSHOTS / MSB_BENCH_DEPTH
//! scale it down or up).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use msb_registry::Registry;
use msb_registry::db::{self, SnapshotFileRow, SnapshotRow};
use msb_registry::model::digest::Digest;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let total = env_or("MSB_BENCH_SNAPSHOTS", 100_000);
    let depth = env_or("MSB_BENCH_DEPTH", 10_000).min(total);
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    let mut registry = Registry::open(&root).expect("open registry");
    let image = Digest::of(b"image");

    let t = Instant::now();
    let mut digests = Vec::with_capacity(total);
    {
        let tx = registry.db_mut().write().expect("write tx");
        let mut parent: Option<Digest> = None;
        for i in 0..total {
            let digest = Digest::of(format!("snapshot {i}").as_bytes());
            // The first `depth` snapshots form one chain; the rest are chains of 10.
            let this_parent = if i < depth || i % 10 != 0 {
                parent
            } else {
                None
            };
            let row = SnapshotRow {
                created_at: format!(
                    "2026-10-01T{:02}:{:02}:{:02}Z",
                    (i / 3600) % 24,
                    (i / 60) % 60,
                    i % 60
                ),
                source_sandbox: Some("bench".into()),
                labels: BTreeMap::from([("i".to_string(), i.to_string())]),
                ..snapshot_row(digest, format!("snap-{i:06}"), this_parent, image)
            };
            let files = [
                SnapshotFileRow {
                    path: "manifest.json".into(),
                    size: 500,
                    digest: Digest::of(b"m"),
                },
                SnapshotFileRow {
                    path: "upper.ext4".into(),
                    size: 4 << 30,
                    digest: Digest::of(b"u"),
                },
            ];
            db::snapshots::insert_snapshot(&tx, &row, &files).expect("insert");
            digests.push(digest);
            parent = Some(digest);
        }
        tx.commit().expect("commit");
    }
    println!(
        "built index of {total} snapshots (chain depth {depth}) in {:.2?}",
        t.elapsed()
    );

    let deep = digests[depth - 1];
    let lineage = time(9, || {
        registry.lineage(&deep.to_string(), false).expect("lineage")
    });
    let chain = registry.lineage(&deep.to_string(), false).expect("lineage");
    assert_eq!(chain.len(), depth);
    println!("lineage of a {depth}-deep chain: median {lineage:.2?} (target <= 50 ms)");

    let descendants = time(5, || {
        registry
            .lineage(&digests[0].to_string(), true)
            .expect("descendants")
    });
    println!("descendants of the chain root: median {descendants:.2?}");

    let mid = digests[total / 2];
    let show_digest = time(51, || registry.show(&mid.to_string()).expect("show"));
    let show_prefix = time(51, || registry.show(&mid.hex()[..12]).expect("show"));
    let show_name = time(51, || {
        registry
            .show(&format!("snap-{:06}", total / 2))
            .expect("show")
    });
    println!(
        "show among {total}: median by digest {show_digest:.2?}, by 12-digit prefix {show_prefix:.2?}, by name {show_name:.2?}"
    );

    let list = time(3, || registry.list().expect("list"));
    println!("list (library) of {total}: median {list:.2?}");
    drop(registry);

    let bin = env!("CARGO_BIN_EXE_msb-registry");
    let end_to_end = time(3, || {
        let out = Command::new(bin)
            .args([
                "--root",
                root.to_str().expect("utf-8 root"),
                "list",
                "--json",
            ])
            .output()
            .expect("run binary");
        assert!(out.status.success());
        out.stdout.len()
    });
    println!(
        "`msb-registry list --json` of {total}, end to end: median {end_to_end:.2?} (target <= 1.5 s)"
    );

    du_scale();
}

/// `du` over a registry of MSB_BENCH_DU_SNAPSHOTS (10,000) snapshots in chains
/// of 10, each upper holding MSB_BENCH_DU_CHUNKS (400) data chunks of 128 KiB
/// (50 MiB of data), each child sharing 95% of its parent's chunks; and the
/// size the chunk index adds to the database per GiB of snapshot data.
fn du_scale() {
    use msb_registry::model::chunk::{CHUNK_SIZE, Chunk, ChunkList};

    let total = env_or("MSB_BENCH_DU_SNAPSHOTS", 10_000);
    let per = env_or("MSB_BENCH_DU_CHUNKS", 400);
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    let mut registry = Registry::open(&root).expect("open registry");
    let image = Digest::of(b"image");
    let mut fresh = 0u64;
    let mut next_chunk = || {
        fresh += 1;
        Digest::of(format!("chunk {fresh}").as_bytes())
    };
    let mut rows = Vec::with_capacity(total);
    let mut lists = Vec::with_capacity(total);
    let mut parent: Option<(Digest, Vec<Digest>)> = None;
    for i in 0..total {
        let digest = Digest::of(format!("du snapshot {i}").as_bytes());
        let chunks: Vec<Digest> = match (&parent, i % 10) {
            (Some((_, p)), 1..) => p
                .iter()
                .enumerate()
                .map(|(k, d)| if k % 20 == i % 20 { next_chunk() } else { *d })
                .collect(),
            _ => (0..per).map(|_| next_chunk()).collect(),
        };
        let this_parent = parent.as_ref().filter(|_| i % 10 != 0).map(|(d, _)| *d);
        rows.push(snapshot_row(
            digest,
            format!("du-{i:06}"),
            this_parent,
            image,
        ));
        lists.push(ChunkList {
            chunk_size: CHUNK_SIZE,
            chunks: chunks
                .iter()
                .enumerate()
                .map(|(k, d)| Chunk {
                    offset: k as u64 * 4 * CHUNK_SIZE,
                    length: CHUNK_SIZE,
                    digest: *d,
                })
                .collect(),
        });
        parent = Some((digest, chunks));
    }
    let db_bytes = |registry: &mut Registry| -> u64 {
        registry
            .db()
            .conn()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .expect("checkpoint");
        std::fs::metadata(root.join("registry.db"))
            .expect("db")
            .len()
    };
    let files = |size| {
        [SnapshotFileRow {
            path: "upper.ext4".into(),
            size,
            digest: Digest::of(b"u"),
        }]
    };
    {
        let tx = registry.db_mut().write().expect("write tx");
        for row in &rows {
            db::snapshots::insert_snapshot(&tx, row, &files(4 << 30)).expect("insert");
        }
        tx.commit().expect("commit");
    }
    let without = db_bytes(&mut registry);
    let t = Instant::now();
    {
        let tx = registry.db_mut().write().expect("write tx");
        for (row, list) in rows.iter().zip(&lists) {
            db::chunks::insert_chunk_list(&tx, &row.digest, "upper.ext4", list).expect("chunks");
        }
        tx.commit().expect("commit");
    }
    let insert = t.elapsed();
    let with = db_bytes(&mut registry);
    let data: u64 = lists.iter().map(|l| l.data_bytes()).sum();
    let gib = data as f64 / (1u64 << 30) as f64;
    println!(
        "chunk index of {total} snapshots x {per} chunks ({fresh} distinct, {:.0} GiB of snapshot data): \
         inserted in {insert:.2?}; {:.1} MiB, {:.0} KiB per GiB of data, {:.1} bytes per listed chunk",
        gib,
        (with - without) as f64 / (1 << 20) as f64,
        (with - without) as f64 / 1024.0 / gib,
        (with - without) as f64 / (total * per) as f64
    );

    let du = time(5, || registry.du(&[]).expect("du"));
    let report = registry.du(&[]).expect("du");
    assert_eq!(report.snapshots.len(), total);
    println!(
        "du of {total} snapshots (library): median {du:.2?} (target < 1 s); dedup ratio {:.2}",
        report.totals.dedup_ratio
    );
    drop(registry);
    let bin = env!("CARGO_BIN_EXE_msb-registry");
    let end_to_end = time(3, || {
        let out = Command::new(bin)
            .args(["--root", root.to_str().expect("utf-8 root"), "du", "--json"])
            .output()
            .expect("run binary");
        assert!(out.status.success());
        out.stdout.len()
    });
    println!("`msb-registry du --json` of {total}, end to end: median {end_to_end:.2?}");
}

/// A 4 GiB raw ext4 snapshot row pinned to `image`, created 2026-10-01.
fn snapshot_row(
    digest: Digest,
    name: String,
    parent: Option<Digest>,
    image: Digest,
) -> SnapshotRow {
    SnapshotRow {
        digest,
        name,
        parent,
        image_ref: "docker.io/library/python:3.12".into(),
        image_manifest_digest: image,
        format: "raw".into(),
        fstype: "ext4".into(),
        upper_file: "upper.ext4".into(),
        size_bytes: 4 << 30,
        integrity_algorithm: None,
        integrity_digest: None,
        created_at: "2026-10-01T00:00:00Z".into(),
        source_sandbox: None,
        labels: BTreeMap::new(),
        added_at: 0,
    }
}
