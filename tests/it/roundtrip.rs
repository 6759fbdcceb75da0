//! Export from one registry, import into another: sparse and dense, zstd
//! and plain tar, whole chains, incremental bundles and stdout pipes. The
//! receiving registry must hold the same snapshots, bytes, holes and cache
//! files, verify with content, and export byte-identical archives again.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;

use msb_registry::model::digest::Digest;
use serde_json::Value;

use crate::util::*;

/// Every snapshot and cache file: relative path → (digest recorded in the index, size).
fn indexed_files(reg: &Reg) -> BTreeMap<String, (String, u64)> {
    let rows: Vec<Value> = reg.json(&[
        "sql",
        "SELECT s.digest || '/' || f.path AS p, f.digest, f.size FROM snapshot_files f \
         JOIN snapshots s ON s.digest = f.snapshot \
         UNION ALL SELECT path, digest, size FROM cache_files",
    ]);
    rows.iter()
        .map(|r| {
            (
                r["p"].as_str().unwrap().to_string(),
                (
                    r["digest"].as_str().unwrap().to_string(),
                    r["size"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

fn digests(reg: &Reg) -> Vec<Digest> {
    let listed: Vec<Value> = reg.json(&["list"]);
    let mut out: Vec<Digest> = listed
        .iter()
        .map(|s| s["digest"].as_str().unwrap().parse().unwrap())
        .collect();
    out.sort();
    out
}

/// Upper files of `reg`, keyed by snapshot digest: (bytes, allocated bytes).
fn uppers(reg: &Reg) -> BTreeMap<String, (Vec<u8>, u64)> {
    let rows: Vec<Value> = reg.json(&["sql", "SELECT digest, name, upper_file FROM snapshots"]);
    rows.iter()
        .map(|r| {
            let path = reg
                .root()
                .join("snapshots")
                .join(r["name"].as_str().unwrap())
                .join(r["upper_file"].as_str().unwrap());
            let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
            (
                r["digest"].as_str().unwrap().to_string(),
                (std::fs::read(&path).unwrap(), allocated),
            )
        })
        .collect()
}

/// Assert `to` holds what `from` holds: snapshots, recorded digests, bytes,
/// and holes (allocation within a few blocks of the source's).
fn assert_same_content(from: &Reg, to: &Reg) {
    assert_eq!(digests(from), digests(to));
    assert_eq!(indexed_files(from), indexed_files(to));
    let (a, b) = (uppers(from), uppers(to));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (digest, (bytes, allocated)) in &a {
        let (got, got_allocated) = &b[digest];
        assert!(
            bytes == got,
            "upper of {digest} differs after the round trip"
        );
        assert!(
            *got_allocated <= allocated + 64 * 1024,
            "upper of {digest} lost its holes: {got_allocated} allocated, source {allocated}"
        );
    }
    let verify: Value = to.json(&["verify", "--content"]);
    assert_eq!(verify["ok"], true, "{verify}");
}

fn export(reg: &Reg, head: &str, out: &std::path::Path, extra: &[&str]) {
    let mut args = vec!["export", head, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    reg.run(&args).ok();
}

#[test]
fn sparse_zstd_and_dense_plain_chains_round_trip_and_re_export_identically() {
    let src = Reg::new();
    chain_in_registry(&src);
    for (label, flags) in [
        ("sparse.tar.zst", &[][..]),
        ("dense.tar", &["--dense", "--plain-tar"][..]),
    ] {
        let archive = src.path(label);
        let mut all = vec!["--with-parents", "--with-image"];
        all.extend_from_slice(flags);
        export(&src, "app", &archive, &all);

        let dst = Reg::new();
        let report: Value = dst.json(&["import", archive.to_str().unwrap(), "--name", "app"]);
        assert_eq!(report["imported"].as_array().unwrap().len(), 3, "{label}");
        assert_same_content(&src, &dst);

        let again = dst.path(label);
        export(&dst, "app", &again, &all);
        assert!(
            std::fs::read(&archive).unwrap() == std::fs::read(&again).unwrap(),
            "{label}: the receiving registry exports a different archive"
        );
    }
}

#[test]
fn incremental_bundle_applies_on_top_of_its_base() {
    let src = Reg::new();
    let (chain, _) = chain_in_registry(&src);
    let first = src.path("first.tar.zst");
    export(&src, "deps", &first, &["--with-parents", "--with-image"]);
    let rest = src.path("rest.tar.zst");
    export(&src, "app", &rest, &["--with-parents", "--base", "deps"]);

    let dst = Reg::new();
    dst.run(&["import", first.to_str().unwrap()]).ok();
    let report: Value = dst.json(&["import", rest.to_str().unwrap(), "--name", "app"]);
    assert_eq!(
        report["imported"],
        serde_json::json!([chain[2].to_string()])
    );
    assert_same_content(&src, &dst);
    let lineage: Vec<Value> = dst.json(&["lineage", "app"]);
    assert_eq!(lineage.len(), 3);
    assert!(lineage.iter().all(|e| e.get("missing").is_none()));
}

#[test]
fn incremental_bundle_without_its_base_is_refused_or_lands_shallow_and_heals_later() {
    let src = Reg::new();
    let (chain, _) = chain_in_registry(&src);
    let first = src.path("first.tar.zst");
    export(&src, "deps", &first, &["--with-parents", "--with-image"]);
    let rest = src.path("rest.tar.zst");
    export(
        &src,
        "app",
        &rest,
        &["--with-parents", "--base", "deps", "--with-image"],
    );

    let dst = Reg::new();
    // Without its base the archive is refused, naming the base, and nothing lands.
    dst.run(&["import", rest.to_str().unwrap(), "--name", "app"])
        .fails(3, &chain[1].to_string());
    // Nothing landed: not even a registry at the new root (issue 22).
    assert!(!dst.root().join("registry.db").exists());
    dst.run(&[
        "import",
        rest.to_str().unwrap(),
        "--name",
        "app",
        "--allow-shallow",
    ])
    .ok();
    let listed: Vec<Value> = dst.json(&["list"]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["shallow"], true);
    assert_eq!(listed[0]["parent"], chain[1].to_string());

    dst.run(&["import", first.to_str().unwrap()]).ok();
    let listed: Vec<Value> = dst.json(&["list"]);
    assert!(listed.iter().all(|s| s["shallow"] == false));
    assert_same_content(&src, &dst);
}

#[test]
fn export_to_stdout_pipes_into_import_from_stdin() {
    let src = Reg::new();
    chain_in_registry(&src);
    let dst = Reg::new();
    let mut exporter = src
        .command(&["export", "app", "-o", "-", "--with-parents", "--with-image"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let importer = dst
        .command(&["import", "-", "--name", "app", "--json"])
        .stdin(exporter.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(exporter.wait().unwrap().success());
    let report: Value = Run::from(importer).ok().json();
    assert_eq!(report["imported"].as_array().unwrap().len(), 3);
    assert_same_content(&src, &dst);
}
