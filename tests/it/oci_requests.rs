//! The requests a push makes, counted in the fake registry's log: a fresh
//! chain into an empty repository asks nothing it need not ask (no HEAD
//! per blob, no manifest check) and sends each blob with one POST and one
//! PUT; a blob left in a repository that lists no tag costs only its
//! upload again.

use std::collections::BTreeMap;

use msb_registry::model::digest::Digest;
use msb_registry::sample::mixed_bytes;
use serde_json::{Value, json};

use crate::oci_fake::*;
use crate::util::Reg;

/// Requests in `log` by kind: `METHOD /v2/…/<what>` with `what` one of
/// `blob`, `upload`, `manifest`, `tags`, `base` (`/v2/`), `other`.
fn kinds(log: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in log.iter().filter(|e| e["listener"] == "registry") {
        let path = e["path"].as_str().unwrap_or("");
        let path = path.split('?').next().unwrap();
        let what = if path == "/v2/" {
            "base"
        } else if path.contains("/blobs/uploads/") {
            "upload"
        } else if path.contains("/blobs/") {
            "blob"
        } else if path.contains("/manifests/") {
            "manifest"
        } else if path.ends_with("/tags/list") {
            "tags"
        } else {
            "other"
        };
        let method = e["method"].as_str().unwrap_or("?");
        *out.entry(format!("{method} {what}")).or_default() += 1;
    }
    out
}

/// Pull `target` into a fresh root; asserts it brings `head`.
#[track_caller]
fn pulled_into_fresh_root(env: &Env, target: &str, head: &Digest) -> Reg {
    let dst = populated();
    let run = env.run(&dst, &["pull", target, "--insecure", "--json"], b"");
    assert_eq!(run.ok().json::<Value>()["head"], head.to_string());
    dst
}

#[test]
fn a_fresh_chain_push_makes_one_post_and_one_put_per_blob_and_no_head() {
    let fake = Fake::start();
    let env = Env::new();
    let (src, base) = source("base");
    let mut spec = sample_spec(&src, "child").parent(base);
    spec.data = vec![
        (0, mixed_bytes(1, 200_000)),
        (5 << 20, mixed_bytes(3, 90_000)),
    ];
    let child = add(&src, "child", &spec);
    let target = fake.at("child");
    let run = env.run(
        &src,
        &[
            "push",
            "child",
            &target,
            "--with-parents",
            "--insecure",
            "--json",
        ],
        b"",
    );
    let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
    let blobs = report["blobs_uploaded"].as_u64().unwrap() as usize;
    // Two snapshots: each at least a pack, a chunk map and a config.
    assert!(blobs >= 6, "{report}");
    assert_eq!(report["blobs_present"], 0, "{report}");
    let want: BTreeMap<String, usize> = [
        ("GET base", 1),
        ("GET tags", 1),
        ("POST upload", blobs),
        ("PUT upload", blobs),
        // Each manifest under its identity tag, parents first, then `child`.
        ("PUT manifest", 3),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(kinds(&fake.log()), want);

    let dst = pulled_into_fresh_root(&env, &target, &child);
    dst.run(&["verify", "--content"]).ok();

    // The repository has tags now: a push from a root that recorded
    // nothing there asks about each blob, and sends none.
    let (other, _) = source("base");
    fake.control(json!({"op": "reset_log"}));
    let again = push(&env, &other, "base", &fake);
    assert_eq!(again["blobs_uploaded"], 0, "{again}");
    let seen = kinds(&fake.log());
    assert!(seen.get("HEAD blob").copied().unwrap_or(0) > 0, "{seen:?}");
    assert!(!seen.contains_key("POST upload"), "{seen:?}");
}

#[test]
fn a_blob_left_in_a_repository_without_tags_is_only_sent_again() {
    let fake = Fake::start();
    let env = Env::new();
    let (src, digest) = source("base");
    // An interrupted push from elsewhere left the config (the snapshot's
    // manifest, whose digest is the snapshot's) and no tag.
    let config = std::fs::read(src.root().join("snapshots/base/manifest.json")).unwrap();
    assert_eq!(fake.put_blob(&config), digest.to_string());
    let report = push(&env, &src, "base", &fake);
    assert_eq!(report["blobs_present"], 0, "{report}");
    let seen = kinds(&fake.log());
    assert!(!seen.contains_key("HEAD blob"), "{seen:?}");
    let dst = pulled_into_fresh_root(&env, &fake.at("base"), &digest);
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn a_tag_listing_refused_or_unknown_means_asking_about_each_blob() {
    for status in [403, 404, 405] {
        let fake = Fake::start();
        let env = Env::new();
        let (src, digest) = source("base");
        fake.config(json!({"inject": [
            {"method": "GET", "path": "/tags/list", "action": "status", "status": status},
        ]}));
        let report = push(&env, &src, "base", &fake);
        assert!(report["blobs_uploaded"].as_u64().unwrap() > 0, "{report}");
        let seen = kinds(&fake.log());
        assert_eq!(seen.get("GET tags"), Some(&1), "{status}: {seen:?}");
        assert_eq!(
            seen.get("HEAD blob"),
            seen.get("POST upload"),
            "{status}: {seen:?}"
        );
        pulled_into_fresh_root(&env, &fake.at("base"), &digest);
    }
}
