//! gc and verify through the binary: what lives, what goes, live imports,
//! dry runs, crash order, and corruption found by verify.

use std::path::Path;

use msb_registry::model::digest::Digest;
use msb_registry::model::image::{CacheFile, CacheKind, ImageMetadata, LayerInfo};

use crate::reports::{GcReport, Removed, VerifyReport};
use crate::util::*;

fn cache_path(kind: CacheKind, key: Digest) -> String {
    format!("cache/{}", CacheFile { kind, key }.rel_path())
}

/// Run gc (after a dry run that must change nothing and announce exactly
/// what the real run then removes); returns the real run's report. No
/// grace period: the debris these tests make is seconds old.
fn gc(reg: &Reg) -> GcReport {
    let before = (reg.tree(), reg.dump());
    let dry: GcReport = reg.json(&["gc", "--dry-run", "--grace", "0"]);
    assert!(dry.dry_run);
    assert_eq!(
        (reg.tree(), reg.dump()),
        before,
        "a dry run deleted something"
    );
    let real: GcReport = reg.json(&["gc", "--grace", "0"]);
    assert!(!real.dry_run);
    assert_eq!(
        real.removed, dry.removed,
        "the dry run's plan differs from the run"
    );
    assert_eq!((real.files, real.bytes), (dry.files, dry.bytes));
    for r in real.removed.iter().filter(|r| r.path.contains('/')) {
        assert!(
            !reg.root().join(&r.path).exists(),
            "{} is still on disk",
            r.path
        );
    }
    real
}

/// `verify --content` passes with nothing left over.
fn verify_clean(reg: &Reg) {
    let v: VerifyReport = reg.json(&["verify", "--content"]);
    assert!(v.ok, "{:?}", v.problems);
    assert!(v.debris.is_empty(), "{:?}", v.debris);
    assert!(v.unfinished_imports.is_empty());
    assert_eq!(v.checked_files == 0, v.checked_bytes == 0);
}

fn paths(r: &GcReport, kind: &str) -> Vec<String> {
    let mut v: Vec<String> = r
        .removed
        .iter()
        .filter(|x| x.kind == kind)
        .map(|x| x.path.clone())
        .collect();
    v.sort();
    v
}

/// An image cache for `reference` whose layers are `shared` (copied from
/// `from`) followed by one private layer of `private` bytes.
fn image_sharing(
    dir: &Path,
    from: &Path,
    reference: &str,
    seed: u8,
    shared: &[LayerInfo],
    private: usize,
) -> ImageMetadata {
    std::fs::create_dir_all(dir.join("layers")).unwrap();
    let mut layers = shared.to_vec();
    for l in shared {
        let rel = CacheFile {
            kind: CacheKind::Layers,
            key: l.diff_id,
        }
        .rel_path();
        std::fs::copy(from.join(&rel), dir.join(&rel)).unwrap();
    }
    let content = vec![seed | 0x80; private];
    let diff_id = Digest::of(&content);
    let rel = CacheFile {
        kind: CacheKind::Layers,
        key: diff_id,
    }
    .rel_path();
    std::fs::write(dir.join(rel), &content).unwrap();
    layers.push(LayerInfo {
        digest: Digest::of(&[seed, 9]),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        size_bytes: private as u64 / 2,
        diff_id,
    });
    write_image_metadata(dir, reference, seed, layers)
}

#[test]
fn unpinned_image_goes_and_a_shared_layer_stays() {
    let reg = Reg::new();
    let cache_a = reg.path("cache-a");
    let a = make_image_cache(&cache_a, "python:3.12", 1, &[4096, 8192]);
    let cache_b = reg.path("cache-b");
    let b = image_sharing(&cache_b, &cache_a, "alpine:3", 2, &a.layers[..1], 12288);
    add_pinned(&reg, "a", &a, "python:3.12", &cache_a);
    add_pinned(&reg, "b1", &b, "alpine:3", &cache_b);
    add_pinned(&reg, "b2", &b, "alpine:3", &cache_b);

    let nothing = gc(&reg);
    assert!(nothing.removed.is_empty(), "{:?}", nothing.removed);
    verify_clean(&reg);

    reg.run(&["rm", "b1"]).ok();
    let still_pinned = gc(&reg);
    assert!(
        still_pinned.removed.is_empty(),
        "{:?}",
        still_pinned.removed
    );

    reg.run(&["rm", "b2"]).ok();
    let r = gc(&reg);
    let shared = cache_path(CacheKind::Layers, a.layers[0].diff_id);
    let private = cache_path(CacheKind::Layers, b.layers[1].diff_id);
    assert_eq!(paths(&r, "image"), [b.manifest_digest.to_string()]);
    assert_eq!(paths(&r, "layer"), std::slice::from_ref(&private));
    assert_eq!(
        paths(&r, "fsmeta"),
        [cache_path(CacheKind::Fsmeta, b.manifest_digest)]
    );
    assert_eq!(
        paths(&r, "vmdk"),
        [cache_path(CacheKind::Vmdk, b.manifest_digest)]
    );
    assert_eq!(
        paths(&r, "metadata"),
        [format!(
            "cache/{}",
            CacheFile::metadata_for_ref("alpine:3").rel_path()
        )]
    );
    assert_eq!(r.removed.len(), 5);
    assert_eq!(r.files, 4);
    let freed = 12288 + 8192 + r.removed.iter().find(|x| x.kind == "vmdk").unwrap().bytes;
    assert!(r.bytes >= freed, "{} < {freed}", r.bytes);
    assert!(reg.root().join(&shared).exists(), "the shared layer went");
    for l in &a.layers {
        assert!(
            reg.root()
                .join(cache_path(CacheKind::Layers, l.diff_id))
                .exists()
        );
    }
    assert!(!reg.root().join(&private).exists());
    let images: Vec<serde_json::Value> = reg.json(&["sql", "SELECT manifest_digest FROM images"]);
    assert_eq!(images.len(), 1);
    verify_clean(&reg);

    reg.run(&["rm", "a"]).ok();
    let last = gc(&reg);
    assert_eq!(paths(&last, "layer").len(), 2);
    assert_eq!(paths(&last, "image"), [a.manifest_digest.to_string()]);
    let rows: Vec<serde_json::Value> = reg.json(&["sql", "SELECT path FROM cache_files"]);
    assert!(rows.is_empty(), "{rows:?}");
    verify_clean(&reg);
}

#[test]
fn debris_and_dead_imports_go() {
    let reg = Reg::new();
    let (_, image) = chain_in_registry(&reg);
    let root = reg.root();
    let stray = root.join("cache/layers/stray.tmp");
    std::fs::write(&stray, b"x").unwrap();
    let unrecorded = root.join(cache_path(CacheKind::Layers, Digest::of(b"nobody")));
    std::fs::write(&unrecorded, vec![1u8; 4096]).unwrap();
    std::fs::create_dir_all(root.join("snapshots/ghost")).unwrap();
    std::fs::write(root.join("snapshots/ghost/upper.ext4"), vec![2u8; 100]).unwrap();
    std::fs::write(root.join("snapshots/base/extra"), b"left behind").unwrap();

    let src = reg.path("src/dead");
    make_snapshot(&src, &SnapSpec::new(&image).label("dead", "yes"));
    let crashed = reg.run_env(
        &["add", src.to_str().unwrap(), "--name", "dead"],
        &[("MSB_FAILPOINT", "lease.acquired:abort")],
    );
    assert_ne!(crashed.code, 0);
    let staging: Vec<String> = std::fs::read_dir(root.join("staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(staging.len(), 2, "{staging:?}");
    let id = staging
        .iter()
        .find(|n| !n.ends_with(".lock"))
        .unwrap()
        .clone();

    let before: VerifyReport = reg.json(&["verify"]);
    assert!(before.ok, "debris is not corruption: {:?}", before.problems);
    // stray.tmp is outside the artifact grammar: not ours, so not debris (issue 16).
    assert_eq!(before.debris.len(), 5, "{:?}", before.debris);
    assert!(!before.debris.iter().any(|d| d.ends_with("stray.tmp")));
    assert_eq!(before.unfinished_imports.len(), 1);
    assert_eq!(before.unfinished_imports[0].id, id);
    assert_eq!(before.unfinished_imports[0].state, "staging");
    assert!(!before.unfinished_imports[0].live);

    let r = gc(&reg);
    assert_eq!(
        paths(&r, "debris"),
        [
            cache_path(CacheKind::Layers, Digest::of(b"nobody")),
            "snapshots/base/extra".into(),
            "snapshots/ghost".into(),
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    assert_eq!(
        paths(&r, "staging"),
        [format!("staging/{id}"), format!("staging/{id}.lock")]
    );
    assert_eq!(paths(&r, "journal"), [id]);
    assert_eq!(r.removed.len(), 6);
    assert!(stray.exists(), "gc removed a file that is not ours");
    assert!(root.join("snapshots/base/upper.ext4").exists());
    assert_eq!(std::fs::read_dir(root.join("staging")).unwrap().count(), 0);
    let imports: Vec<serde_json::Value> = reg.json(&["sql", "SELECT id FROM imports"]);
    assert_eq!(imports.len(), 3, "the finished adds' rows are kept");
    verify_clean(&reg);
}

#[test]
fn a_live_import_keeps_its_files() {
    let reg = Reg::new();
    let (_, image) = chain_in_registry(&reg);
    let src = reg.path("src/slow");
    make_snapshot(&src, &SnapSpec::new(&image).label("slow", "yes"));
    let mut child = paused(
        &reg,
        &["add", src.to_str().unwrap(), "--name", "slow"],
        "lease.acquired",
    );
    let staging = reg.root().join("staging");
    let id = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| !n.ends_with(".lock"))
        .unwrap();
    let staged = staging.join(&id).join("partial.bin");
    std::fs::write(&staged, vec![7u8; 10000]).unwrap();

    let r = gc(&reg);
    assert!(r.removed.is_empty(), "{:?}", r.removed);
    assert!(staged.exists());
    assert!(staging.join(format!("{id}.lock")).exists());
    let v: VerifyReport = reg.json(&["verify"]);
    assert!(v.ok);
    assert!(v.debris.is_empty(), "{:?}", v.debris);
    assert_eq!(v.unfinished_imports.len(), 1);
    assert!(v.unfinished_imports[0].live);

    child.kill().unwrap();
    child.wait().unwrap();
    let after = gc(&reg);
    assert_eq!(
        paths(&after, "staging"),
        [format!("staging/{id}"), format!("staging/{id}.lock")]
    );
    assert_eq!(
        after
            .removed
            .iter()
            .find(|x| x.kind == "staging")
            .unwrap()
            .bytes,
        10000
    );
    assert_eq!(paths(&after, "journal"), [id]);
    verify_clean(&reg);
}

#[test]
fn a_crash_after_the_rows_leaves_only_debris() {
    let reg = Reg::new();
    let cache = reg.path("cache");
    let image = make_image_cache(&cache, "python:3.12", 3, &[4096]);
    add_pinned(&reg, "only", &image, "python:3.12", &cache);
    reg.run(&["rm", "only"]).ok();
    let crashed = reg.run_env(&["gc"], &[("MSB_FAILPOINT", "gc.rows-deleted:abort")]);
    assert_ne!(crashed.code, 0);
    let rows: Vec<serde_json::Value> = reg.json(&["sql", "SELECT path FROM cache_files"]);
    assert!(rows.is_empty(), "rows were committed before the files went");
    let v: VerifyReport = reg.json(&["verify"]);
    assert!(v.ok, "{:?}", v.problems);
    assert_eq!(v.debris.len(), 4, "{:?}", v.debris);
    let r = gc(&reg);
    assert_eq!(paths(&r, "debris").len(), 4);
    assert_eq!(
        reg.root().join("cache/layers").read_dir().unwrap().count(),
        0
    );
    verify_clean(&reg);
}

#[test]
fn verify_names_corrupt_and_missing_files() {
    let reg = Reg::new();
    let cache = reg.path("cache");
    let image = make_image_cache(&cache, "python:3.12", 4, &[8192]);
    add_pinned(&reg, "s", &image, "python:3.12", &cache);
    verify_clean(&reg);
    let layer = cache_path(CacheKind::Layers, image.layers[0].diff_id);
    let layer_file = reg.root().join(&layer);
    let original = std::fs::read(&layer_file).unwrap();
    let mut flipped = original.clone();
    flipped[100] ^= 0x01;
    std::fs::write(&layer_file, &flipped).unwrap();

    reg.run(&["verify"]).ok();
    let run = reg
        .run(&["verify", "--content"])
        .fails(5, "verification failed: 1 problem(s) found");
    assert!(run.stdout.contains(&layer), "{}", run.stdout);
    let json = reg.run(&["verify", "--content", "--json"]);
    assert_eq!(json.code, 5);
    let v: VerifyReport = json.json();
    assert!(!v.ok);
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert_eq!(v.problems[0].kind, "digest");
    assert_eq!(v.problems[0].path, layer);
    assert!(v.problems[0].digest.is_some());
    assert!(v.problems[0].detail.contains("index records"));
    reg.run(&["verify", "s", "--content"])
        .fails(5, "verification failed");
    std::fs::write(&layer_file, &original).unwrap();
    verify_clean(&reg);

    let upper = reg.root().join("snapshots/s/upper.ext4");
    let saved = reg.path("saved-upper");
    std::fs::rename(&upper, &saved).unwrap();
    let run = reg.run(&["verify"]).fails(5, "verification failed");
    assert!(
        run.stdout.contains("snapshots/s/upper.ext4"),
        "{}",
        run.stdout
    );
    let v: VerifyReport = reg.run(&["verify", "--json"]).json();
    assert_eq!(v.problems.len(), 1);
    assert_eq!(v.problems[0].kind, "missing");
    assert_eq!(v.problems[0].path, "snapshots/s/upper.ext4");
    std::fs::rename(&saved, &upper).unwrap();

    let manifest = reg.root().join("snapshots/s/manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"name\":\"s\"", "\"name\":\"t\"")).unwrap();
    let v: VerifyReport = reg.run(&["verify", "--content", "--json"]).json();
    let kinds: Vec<&str> = v.problems.iter().map(|p| p.kind.as_str()).collect();
    assert_eq!(kinds, ["digest", "manifest"], "{:?}", v.problems);
    std::fs::write(&manifest, text).unwrap();
    verify_clean(&reg);
    reg.run(&["verify", "s", "--content"]).ok();
}

/// Start `args` with a failpoint that pauses it; return once it says so.
fn paused(reg: &Reg, args: &[&str], failpoint: &str) -> std::process::Child {
    reg.held_at(args, failpoint, Hold::Pause).child
}

#[test]
fn an_image_a_live_import_will_pin_is_kept() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    // A second image, cached but pinned by nothing once `other` is removed.
    let cache = reg.path("other-cache");
    let other_image = make_image_cache(&cache, "alpine:3.20", 9, &[8192, 4096]);
    let dir = reg.path("src/other");
    let mut spec = SnapSpec::new(&other_image);
    spec.image.0 = "alpine:3.20".into();
    make_snapshot(&dir, &spec);
    reg.run(&[
        "add",
        dir.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ])
    .ok();
    let archive = reg.path("other.tar.zst");
    reg.run(&["export", "other", "-o", archive.to_str().unwrap()])
        .ok();
    reg.run(&["rm", "other"]).ok();
    let image_files: Vec<String> = other_image
        .layers
        .iter()
        .map(|l| cache_path(CacheKind::Layers, l.diff_id))
        .chain([
            cache_path(CacheKind::Fsmeta, other_image.manifest_digest),
            cache_path(CacheKind::Vmdk, other_image.manifest_digest),
        ])
        .collect();

    // The archive holds no image: the import relies on the cached copy.
    let mut child = paused(
        &reg,
        &["import", archive.to_str().unwrap()],
        "import.streamed",
    );
    let r = gc(&reg);
    assert!(
        r.removed.is_empty(),
        "gc removed what the import will pin: {:?}",
        r.removed
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = paused(&reg, &["add", dir.to_str().unwrap()], "add.staged");
    let r = gc(&reg);
    let kept: Vec<&Removed> = r
        .removed
        .iter()
        .filter(|x| x.kind != "staging" && x.kind != "journal")
        .collect();
    assert!(
        kept.is_empty(),
        "gc removed what the add will pin: {kept:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    reg.run(&["import", archive.to_str().unwrap(), "--name", "other"])
        .ok();
    let show: serde_json::Value = reg.json(&["show", "other"]);
    assert_eq!(show["image_cached"], true, "{show}");
    for f in &image_files {
        assert!(reg.root().join(f).exists(), "{f} is gone");
    }
    let r = gc(&reg);
    assert!(
        r.removed
            .iter()
            .all(|x| x.kind == "staging" || x.kind == "journal"),
        "{:?}",
        r.removed
    );
    verify_clean(&reg);

    // With no import alive, the same image goes once nothing pins it.
    reg.run(&["rm", "other"]).ok();
    let r = gc(&reg);
    let mut removed: Vec<String> = r
        .removed
        .iter()
        .filter(|x| matches!(x.kind.as_str(), "layer" | "fsmeta" | "vmdk"))
        .map(|x| x.path.clone())
        .collect();
    removed.sort();
    let mut expected = image_files.clone();
    expected.sort();
    assert_eq!(removed, expected);
    verify_clean(&reg);
}
