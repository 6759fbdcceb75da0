//! `demo`: the main job end to end through the binary.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::util::{Reg, Run, bin, command_at};

/// Without `--root` on the command line the demo works in a new directory
/// under TMPDIR and never touches the registry MSB_REGISTRY_ROOT names; the
/// registry it imports into holds the chain and verifies with content.
#[test]
fn demo_builds_exports_imports_and_verifies_away_from_the_env_registry() {
    let scratch = Reg::new();
    let tmp = scratch.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let env_registry = scratch.path("real-registry");
    let out = Command::new(bin())
        .args(["demo", "--json"])
        .env("MSB_REGISTRY_ROOT", &env_registry)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let run = Run::from(out).ok();
    assert!(!env_registry.exists(), "demo wrote into MSB_REGISTRY_ROOT");
    let report: Value = run.json();

    let imported = report["imported_root"].as_str().unwrap();
    assert!(imported.starts_with(tmp.to_str().unwrap()), "{imported}");
    let lineage = report["lineage"].as_array().unwrap();
    assert_eq!(lineage.len(), 3);
    assert_eq!(lineage[2]["name"], "py-app");
    assert_eq!(lineage[2]["depth"], 0);
    let snapshots = report["snapshots"].as_array().unwrap();
    let lineage_digests: Vec<&Value> = lineage.iter().map(|e| &e["digest"]).collect();
    assert_eq!(lineage_digests, snapshots.iter().collect::<Vec<_>>());
    assert_eq!(report["logical_bytes"], 3u64 << 30);

    let there =
        |args: &[&str]| Run::from(command_at(Path::new(imported), args).output().unwrap()).ok();
    let listed: Vec<Value> = there(&["list", "--json"]).json();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|s| s["shallow"] == false));
    let verify: Value = there(&["verify", "--content", "--json"]).json();
    assert_eq!(verify["ok"], true);
    assert_eq!(verify["checked_files"], report["verified_files"]);
    let cache: Vec<Value> =
        there(&["sql", "--json", "select count(*) as n from cache_files"]).json();
    assert_eq!(cache[0]["n"], report["cache_files"]);
}
