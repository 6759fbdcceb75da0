//! push and pull through a real OCI registry (Debian's `docker-registry`,
//! see `ociutil`): a chain with its image from one root to another, what
//! crosses the wire when the other side holds the parent, kill -9 at the
//! failpoints of both and the rerun, TLS with a private CA, basic auth, a
//! registry that dies mid-transfer, and skopeo reading what we push.
//! Every test ends with `verify --content` on each root it touched.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use msb_registry::model::digest::Digest;
use msb_registry::sample::SnapshotSpec;
use msb_registry::sample::ext4::{self, Round};
use serde::Deserialize;

use crate::crash::rows;
use crate::ociutil::*;
use crate::util::*;

const SIGKILL: i32 = 9;
const SIGABRT: i32 = 6;

#[derive(Debug, Deserialize)]
struct PushReport {
    repository: String,
    tag: String,
    snapshots: Vec<PushedSnapshot>,
    blobs_uploaded: u64,
    bytes_uploaded: u64,
    blobs_present: u64,
    bytes_present: u64,
    blobs_mounted: u64,
    chunks_uploaded: u64,
    chunks_present: u64,
    image: Option<PushedImage>,
}

#[derive(Debug, Deserialize)]
struct PushedSnapshot {
    digest: String,
    name: String,
    manifest_digest: String,
    tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct PushedImage {
    manifest_digest: String,
    tag: String,
}

#[derive(Debug, Deserialize)]
struct PullReport {
    head: String,
    name: String,
    manifest_digest: String,
    imported: Vec<String>,
    skipped: Vec<String>,
    chunks_downloaded: u64,
    bytes_downloaded: u64,
    chunks_local: u64,
    bytes_local: u64,
    chunks_resumed: u64,
    image_files_installed: u64,
}

#[derive(Debug, Deserialize)]
struct Usage {
    name: String,
    data_bytes: u64,
    new_bytes: u64,
}

#[derive(Debug, Deserialize)]
struct DuReport {
    snapshots: Vec<Usage>,
}

#[derive(Debug, Deserialize)]
struct GcReport {
    removed: Vec<serde_json::Value>,
}

/// A real ext4 parent and child (sparse uppers of 64 MiB holding a few MiB
/// of files) and the image cache both pin, built once per test run.
struct Ext4Chain {
    base: PathBuf,
    app: PathBuf,
    cache: PathBuf,
    base_digest: Digest,
    app_digest: Digest,
    /// The manifest digest of the image both pin.
    image_digest: Digest,
}

fn ext4_chain() -> &'static Ext4Chain {
    static CHAIN: OnceLock<Ext4Chain> = OnceLock::new();
    CHAIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oci-ext4-chain");
        let _ = std::fs::remove_dir_all(&dir);
        let (base, app, cache) = (dir.join("py-base"), dir.join("py-app"), dir.join("cache"));
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir_all(&app).unwrap();
        let image = make_image_cache(&cache, "python:3.12", 5, &[8192, 4096]);
        ext4::make_upper(&base.join("upper.ext4"), 64 << 20, &Round::new(21, 3, 12)).unwrap();
        let mut round = Round::new(22, 1, 5);
        round.rewrites = 3;
        ext4::make_child(
            &base.join("upper.ext4"),
            &app.join("upper.ext4"),
            &round,
            "r1",
        )
        .unwrap();
        let base_digest =
            msb_registry::sample::write_manifest(&base, &SnapshotSpec::new(&image)).unwrap();
        let mut spec = SnapshotSpec::new(&image).parent(base_digest);
        spec.created_at = "2026-10-02T09:00:00Z".into();
        let app_digest = msb_registry::sample::write_manifest(&app, &spec).unwrap();
        Ext4Chain {
            base,
            app,
            cache,
            base_digest,
            app_digest,
            image_digest: image.manifest_digest,
        }
    })
}

/// A root holding the ext4 chain: `py-base` (with its image cache) and
/// `py-app`.
fn root_with_chain() -> Reg {
    let chain = ext4_chain();
    let reg = Reg::new();
    reg.run(&[
        "add",
        chain.base.to_str().unwrap(),
        "--cache-dir",
        chain.cache.to_str().unwrap(),
    ])
    .ok();
    reg.run(&["add", chain.app.to_str().unwrap()]).ok();
    reg
}

/// The binary against `reg`, with a docker config directory of its own
/// (empty unless a test writes one), so the user's never leaks in.
fn client(reg: &Reg, args: &[&str]) -> Command {
    let mut cmd = reg.command(args);
    let docker = reg.path("docker-config");
    std::fs::create_dir_all(&docker).unwrap();
    cmd.env("DOCKER_CONFIG", docker).stdin(Stdio::null());
    cmd
}

fn run(reg: &Reg, args: &[&str]) -> Run {
    Run::from(client(reg, args).output().unwrap())
}

/// Run with `input` on stdin (`--password-stdin`).
fn run_stdin(reg: &Reg, args: &[&str], input: &str) -> Run {
    let mut child = client(reg, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    Run::from(child.wait_with_output().unwrap())
}

#[track_caller]
fn push(reg: &Reg, args: &[&str]) -> PushReport {
    let mut a = vec!["push"];
    a.extend(args);
    a.extend(["--insecure", "--json"]);
    run(reg, &a).ok().json()
}

#[track_caller]
fn pull(reg: &Reg, args: &[&str]) -> PullReport {
    let mut a = vec!["pull"];
    a.extend(args);
    a.extend(["--insecure", "--json"]);
    run(reg, &a).ok().json()
}

/// Assert a failed run: exit `code`, one `error:` line naming `text`
/// (a `--insecure` warning may come before it).
#[track_caller]
fn failed(run: &Run, code: i32, text: &str) {
    assert_eq!(
        run.code, code,
        "exit code\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {:?}", run.stderr);
    assert!(errors[0].contains(text), "{:?} lacks {text:?}", errors[0]);
}

#[track_caller]
fn verify_content(reg: &Reg) {
    reg.run(&["verify", "--content"]).ok();
}

/// `gc --dry-run` (default grace) plans nothing.
#[track_caller]
fn gc_plans_nothing(reg: &Reg) {
    let plan: GcReport = reg.json(&["gc", "--dry-run"]);
    assert!(
        plan.removed.is_empty(),
        "gc would remove {:?}",
        plan.removed
    );
}

/// Every snapshot of the root: name → digest.
fn snapshots(reg: &Reg) -> BTreeMap<String, String> {
    let list: Vec<serde_json::Value> = reg.json(&["list"]);
    list.iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `du` of one snapshot: (data bytes, bytes new relative to its parent).
fn usage(reg: &Reg, name: &str) -> (u64, u64) {
    let du: DuReport = reg.json(&["du", name]);
    let u = du.snapshots.iter().find(|u| u.name == name).unwrap();
    (u.data_bytes, u.new_bytes)
}

/// The root's tree without `staging/` (where an interrupted pull keeps
/// its partial files for the rerun).
fn tree_outside_staging(reg: &Reg) -> BTreeMap<String, u64> {
    reg.tree()
        .into_iter()
        .filter(|(p, _)| !p.starts_with("staging"))
        .collect()
}

/// After a pull from `a` into `b`: py-app's files are `a`'s, and gc on
/// `b` finds nothing to do (no staging left behind, no debris).
fn pulled_app_is_whole(a: &Reg, b: &Reg) {
    same_files(
        &a.root().join("snapshots/py-app"),
        &b.root().join("snapshots/py-app"),
    );
    gc_plans_nothing(b);
}

fn same_files(a: &Path, b: &Path) {
    for name in ["manifest.json", "upper.ext4"] {
        assert!(
            std::fs::read(a.join(name)).unwrap() == std::fs::read(b.join(name)).unwrap(),
            "{name} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
    let (sa, sb) = (
        ext4::stats(&a.join("upper.ext4")).unwrap(),
        ext4::stats(&b.join("upper.ext4")).unwrap(),
    );
    assert_eq!(sa, sb, "holes stay holes");
}

/// `127.0.0.1:PORT/v2/REPO/manifests/TAG` answers 200 or 404.
fn tag_exists(remote: &OciRegistry, repo: &str, tag: &str) -> bool {
    match head_status(&remote.host(), &format!("/v2/{repo}/manifests/{tag}")) {
        200 => true,
        404 => false,
        other => panic!("HEAD {repo}:{tag}: HTTP {other}"),
    }
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

/// Assert `report` uploaded exactly the blobs that are new in `remote`'s
/// storage since it held `before` (manifests aside), each counted once with
/// its size: nothing stored earlier was sent again.
#[track_caller]
fn uploaded_exactly_the_new_blobs(
    remote: &OciRegistry,
    before: &BTreeSet<String>,
    report: &PushReport,
) {
    let manifests: BTreeSet<&str> = report
        .snapshots
        .iter()
        .map(|s| s.manifest_digest.as_str())
        .chain(report.image.iter().map(|i| i.manifest_digest.as_str()))
        .collect();
    let new: Vec<String> = remote
        .linked_blobs()
        .into_iter()
        .filter(|b| !before.contains(b) && !manifests.contains(b.as_str()))
        .collect();
    assert_eq!(report.blobs_uploaded, new.len() as u64, "{report:?}");
    assert_eq!(
        report.bytes_uploaded,
        new.iter().map(|b| remote.blob(b).len() as u64).sum::<u64>(),
        "{report:?}"
    );
}

#[test]
fn the_harness_restarts_a_registry_on_its_port_with_its_storage() {
    if !enabled() {
        return;
    }
    let chain = ext4_chain();
    let mut remote = OciRegistry::start(Options::plain());
    let a = root_with_chain();
    let target = format!("{}:base", remote.repo("snaps"));
    push(&a, &["py-base", &target]);
    let (host, blobs) = (remote.host(), remote.blobs());
    assert!(blobs.contains(&chain.base_digest.to_string()), "{blobs:?}");
    remote.restart();
    assert_eq!(remote.host(), host);
    assert_eq!(remote.blobs(), blobs);
    assert!(tag_exists(&remote, "snaps", "base"));
    remote.stop();
    assert!(std::net::TcpStream::connect(&host).is_err(), "stopped");
    verify_content(&a);
}

#[test]
fn a_chain_with_its_image_goes_from_one_root_to_another_through_a_registry() {
    if !enabled() {
        return;
    }
    let chain = ext4_chain();
    let remote = OciRegistry::start(Options::plain());
    let a = root_with_chain();
    let target = format!("{}:app", remote.repo("team/snaps"));
    let pushed = push(&a, &["py-app", &target, "--with-parents", "--with-image"]);
    assert_eq!(pushed.repository, remote.repo("team/snaps"));
    assert_eq!(pushed.tag, "app");
    let digests: Vec<&str> = pushed.snapshots.iter().map(|s| s.digest.as_str()).collect();
    let (base, app) = (chain.base_digest.to_string(), chain.app_digest.to_string());
    assert_eq!(
        digests.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([base.as_str(), app.as_str()])
    );
    for s in &pushed.snapshots {
        let name = if s.digest == base {
            "py-base"
        } else {
            "py-app"
        };
        assert_eq!(s.name, name);
        assert!(
            s.tags.contains(&format!("sha256-{}", hex(&s.digest))),
            "{s:?}"
        );
    }
    let image = pushed
        .image
        .as_ref()
        .expect("--with-image pushes the image");
    let tags = remote.tags("team/snaps");
    for tag in [
        "app".to_string(),
        format!("sha256-{}", hex(&base)),
        format!("sha256-{}", hex(&app)),
        image.tag.clone(),
    ] {
        assert!(tags.contains(&tag), "{tag} not in {tags:?}");
    }
    assert_eq!(
        image.tag,
        format!("image-sha256-{}", chain.image_digest.hex())
    );
    uploaded_exactly_the_new_blobs(&remote, &BTreeSet::new(), &pushed);

    let b = Reg::new();
    let pulled = pull(&b, &[&target]);
    assert_eq!(pulled.head, app);
    assert_eq!(pulled.name, "py-app");
    assert_eq!(
        pulled.manifest_digest,
        pushed
            .snapshots
            .iter()
            .find(|s| s.digest == app)
            .unwrap()
            .manifest_digest
    );
    assert_eq!(
        pulled.imported.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&base, &app])
    );
    assert!(pulled.skipped.is_empty());
    assert!(pulled.chunks_downloaded > 0);
    assert!(pulled.image_files_installed > 0, "{pulled:?}");
    assert_eq!(snapshots(&b), snapshots(&a));
    assert_eq!(
        b.run(&["lineage", "py-app"]).ok().stdout,
        a.run(&["lineage", "py-app"]).ok().stdout
    );
    for name in ["py-base", "py-app"] {
        same_files(
            &a.root().join("snapshots").join(name),
            &b.root().join("snapshots").join(name),
        );
    }
    let show: serde_json::Value = b.json(&["show", "py-app"]);
    assert_eq!(show["image_cached"], true, "{show}");
    let cache_of = |r: &Reg| -> BTreeMap<String, u64> {
        r.tree()
            .into_iter()
            .filter(|(p, _)| p.starts_with("cache/"))
            .collect()
    };
    assert_eq!(cache_of(&b), cache_of(&a));

    // The parent alone by its digest tag under a name of ours, then the
    // head by its manifest digest.
    let c = Reg::new();
    let repo = remote.repo("team/snaps");
    let by_tag = pull(
        &c,
        &[
            &format!("{repo}:sha256-{}", hex(&base)),
            "--name",
            "base-copy",
        ],
    );
    assert_eq!(
        (by_tag.head.as_str(), by_tag.name.as_str()),
        (base.as_str(), "base-copy")
    );
    let by_digest = pull(&c, &[&format!("{repo}@{}", pulled.manifest_digest)]);
    assert_eq!(by_digest.head, app);
    assert_eq!(by_digest.imported, [app.as_str()]);
    assert!(by_digest.chunks_local > 0, "{by_digest:?}");
    verify_content(&a);
    verify_content(&b);
    verify_content(&c);
}

#[test]
fn a_pull_into_a_root_holding_the_parent_downloads_about_the_childs_changes() {
    if !enabled() {
        return;
    }
    let chain = ext4_chain();
    let remote = OciRegistry::start(Options::plain());
    let a = root_with_chain();
    let target = format!("{}:app", remote.repo("snaps"));
    push(&a, &["py-app", &target, "--with-parents"]);

    let b = Reg::new();
    b.run(&["add", chain.base.to_str().unwrap()]).ok();
    let pulled = pull(&b, &[&target]);
    let app = chain.app_digest.to_string();
    assert_eq!(pulled.imported, [app.as_str()]);
    let (data, new) = usage(&a, "py-app");
    assert!(pulled.chunks_local > 0, "{pulled:?}");
    assert!(pulled.bytes_local > 0, "{pulled:?}");
    // The chunks the child does not share with its parent, compressed, plus
    // the chunk map and config: never the upper.
    assert!(
        pulled.bytes_downloaded <= new + (64 << 10),
        "downloaded {} for {new} new bytes: {pulled:?}",
        pulled.bytes_downloaded
    );
    assert!(
        pulled.bytes_downloaded * 2 < data,
        "downloaded {} of an upper holding {data}",
        pulled.bytes_downloaded
    );
    same_files(
        &a.root().join("snapshots/py-app"),
        &b.root().join("snapshots/py-app"),
    );
    verify_content(&a);
    verify_content(&b);
}

/// A chunk the index places in a snapshot whose file has changed since is
/// not trusted: copied from there, or read there as a delta's base, it
/// fails its check and comes down from the registry instead (pull copies
/// and downloads at once, and checks a base only when a delta does not
/// decode against it), and the pulled child is whole.
#[test]
fn a_pull_downloads_what_a_changed_local_parent_no_longer_holds() {
    if !enabled() {
        return;
    }
    let chain = ext4_chain();
    let remote = OciRegistry::start(Options::plain());
    let a = root_with_chain();
    let target = format!("{}:app", remote.repo("snaps"));
    push(&a, &["py-app", &target, "--with-parents"]);

    let intact = Reg::new();
    intact.run(&["add", chain.base.to_str().unwrap()]).ok();
    let clean = pull(&intact, &[&target]);
    assert!(clean.chunks_local > 0, "{clean:?}");

    let b = Reg::new();
    b.run(&["add", chain.base.to_str().unwrap()]).ok();
    let upper = b.root().join("snapshots/py-base/upper.ext4");
    let mut bytes = std::fs::read(&upper).unwrap();
    let mut changed = 0;
    for chunk in bytes.chunks_mut(128 << 10) {
        if chunk.iter().any(|&b| b != 0) {
            chunk[1000] ^= 0x5a;
            changed += 1;
        }
    }
    assert!(changed > 0);
    let mut perms = std::fs::metadata(&upper).unwrap().permissions();
    #[expect(
        clippy::permissions_set_readonly_false,
        reason = "the test damages a snapshot file"
    )]
    perms.set_readonly(false);
    std::fs::set_permissions(&upper, perms).unwrap();
    std::fs::write(&upper, &bytes).unwrap();

    let pulled = pull(&b, &[&target]);
    assert_eq!(pulled.imported, [chain.app_digest.to_string().as_str()]);
    assert_eq!(pulled.chunks_local, 0, "{pulled:?}");
    assert!(
        pulled.chunks_downloaded > clean.chunks_downloaded,
        "{pulled:?} against {clean:?}"
    );
    same_files(
        &a.root().join("snapshots/py-app"),
        &b.root().join("snapshots/py-app"),
    );
    verify_content(&intact);
}

#[test]
fn a_child_pushed_after_its_parent_uploads_about_its_changes() {
    if !enabled() {
        return;
    }
    let remote = OciRegistry::start(Options::plain());
    let a = root_with_chain();
    let repo = remote.repo("snaps");
    let first = push(&a, &["py-base", &format!("{repo}:base")]);
    let stored = remote.storage_bytes();
    assert!(
        stored >= first.bytes_uploaded && stored <= first.bytes_uploaded + (64 << 10),
        "storage {stored} for {} bytes uploaded",
        first.bytes_uploaded
    );

    let before: BTreeSet<String> = remote.linked_blobs().into_iter().collect();
    let second = push(&a, &["py-app", &format!("{repo}:app"), "--with-parents"]);
    uploaded_exactly_the_new_blobs(&remote, &before, &second);
    let (data, new) = usage(&a, "py-app");
    assert!(
        second.chunks_present > 0 && second.blobs_present > 0 && second.bytes_present > 0,
        "the parent's chunks and blobs are known: {second:?}"
    );
    assert!(
        second.bytes_uploaded <= new + (64 << 10),
        "uploaded {} for {new} new bytes: {second:?}",
        second.bytes_uploaded
    );
    assert!(
        second.bytes_uploaded * 2 < data,
        "uploaded {} of an upper holding {data}",
        second.bytes_uploaded
    );
    let grown = remote.storage_bytes() - stored;
    assert!(
        grown >= second.bytes_uploaded && grown <= second.bytes_uploaded + (64 << 10),
        "storage grew by {grown} for {} bytes uploaded",
        second.bytes_uploaded
    );

    // Another repository of the same registry: its blobs are mounted or
    // found, not sent again.
    let stored = remote.storage_bytes();
    let mirror = push(
        &a,
        &["py-app", &remote.repo("mirror/snaps"), "--with-parents"],
    );
    assert!(
        mirror.bytes_uploaded < 64 << 10,
        "uploaded {} to a registry holding every blob: {mirror:?}",
        mirror.bytes_uploaded
    );
    assert_eq!(mirror.chunks_uploaded, 0, "{mirror:?}");
    assert!(mirror.blobs_mounted > 0, "{mirror:?}");
    assert!(remote.storage_bytes() - stored < 64 << 10);
    verify_content(&a);
}

/// Run `args` until the failpoint `point` kills it: `abort` (SIGABRT), or
/// `pause` and then our SIGKILL.
fn kill_at(reg: &Reg, args: &[&str], point: &str, pause: bool) {
    if pause {
        let mut held = reg.held_with(client(reg, args), point, Hold::Pause);
        held.child.kill().unwrap();
        let status = held.child.wait().unwrap();
        assert_eq!(status.signal(), Some(SIGKILL), "{point}");
    } else {
        let out = client(reg, args)
            .env("MSB_FAILPOINT", format!("{point}:abort"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(SIGABRT),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_push_killed_part_way_is_finished_by_running_it_again() {
    if !enabled() {
        return;
    }
    let chain = ext4_chain();
    let a = root_with_chain();
    let clean_remote = OciRegistry::start(Options::plain());
    let clean = push(
        &a,
        &["py-app", &clean_remote.repo("snaps:app"), "--with-parents"],
    );
    // Each kill point, and how many snapshots have their `sha256-<hex>`
    // tag by then (blobs all come before the first manifest).
    for (point, pause, tagged) in [
        ("push.blob-stored@3", true, 0),
        ("push.blob-stored@1", false, 0),
        ("push.manifest-stored", true, 1),
        ("push.manifest-stored@2", true, 2),
    ] {
        let mut remote = OciRegistry::start(Options::plain());
        let target = format!("{}:app", remote.repo("snaps"));
        let args = ["push", "py-app", &target, "--with-parents", "--insecure"];
        kill_at(&a, &args, point, pause);
        // The registry may still be storing a body the client sent in full
        // before it died; a restart settles what it holds.
        remote.restart();
        // The user's tag only on the whole chain; an identity tag only on a
        // snapshot whose blobs and ancestors are stored: each one there
        // pulls into an empty root and verifies.
        assert!(!tag_exists(&remote, "snaps", "app"), "{point}");
        let mut present = 0;
        for digest in [chain.base_digest, chain.app_digest] {
            let tag = format!("sha256-{}", digest.hex());
            if !tag_exists(&remote, "snaps", &tag) {
                continue;
            }
            present += 1;
            let b = Reg::new();
            let pulled = pull(&b, &[&format!("{}:{tag}", remote.repo("snaps"))]);
            assert_eq!(pulled.head, digest.to_string(), "{point}: {tag}");
            verify_content(&b);
        }
        assert_eq!(present, tagged, "{point}");
        let stored: BTreeSet<String> = remote.linked_blobs().into_iter().collect();
        assert!(!stored.is_empty(), "{point}");

        let again = push(&a, &["py-app", &target, "--with-parents"]);
        uploaded_exactly_the_new_blobs(&remote, &stored, &again);
        assert!(
            again.bytes_uploaded < clean.bytes_uploaded,
            "{point}: the rerun sends only the rest: {again:?}"
        );
        if point.starts_with("push.manifest-stored") {
            assert_eq!(again.blobs_uploaded, 0, "{point}: {again:?}");
        }
        assert_eq!(remote.blobs(), clean_remote.blobs(), "{point}");
        assert!(tag_exists(&remote, "snaps", "app"), "{point}");
        // What the registry holds is a complete chain: it pulls and verifies.
        let b = Reg::new();
        let pulled = pull(&b, &[&target]);
        assert_eq!(pulled.head, chain.app_digest.to_string(), "{point}");
        verify_content(&b);
        gc_plans_nothing(&a);
    }
    verify_content(&a);
}

#[test]
fn a_pull_killed_part_way_resumes_with_the_chunks_it_wrote() {
    if !enabled() {
        return;
    }
    let chain = ext4_chain();
    let remote = OciRegistry::start(Options::plain());
    let a = root_with_chain();
    let target = format!("{}:app", remote.repo("snaps"));
    push(&a, &["py-app", &target, "--with-parents"]);
    // An empty registry root (gc makes one).
    let empty = || {
        let r = Reg::new();
        r.run(&["gc"]).ok();
        r
    };
    let clean = pull(&empty(), &[&target]);
    assert_eq!(clean.chunks_resumed, 0);
    // Every chunk written is downloaded, or copied from one written before.
    let written = clean.chunks_downloaded + clean.chunks_local;

    for (point, pause) in [
        ("pull.chunk-written@5".to_string(), true),
        // Among the child's downloads, which come last.
        (format!("pull.chunk-written@{}", written - 3), false),
        ("pull.assembled".to_string(), true),
    ] {
        let point = point.as_str();
        let b = empty();
        let before = (tree_outside_staging(&b), rows(&b));
        kill_at(&b, &["pull", &target, "--insecure"], point, pause);
        assert_eq!(
            (tree_outside_staging(&b), rows(&b)),
            before,
            "{point}: nothing installed"
        );
        // The dead pull's staging is kept for the grace period, then gc takes it.
        gc_plans_nothing(&b);
        let later: GcReport = b.json(&["gc", "--dry-run", "--grace", "0"]);
        assert!(
            later.removed.iter().any(|r| r["kind"] == "staging"),
            "{point}: {:?}",
            later.removed
        );
        b.run(&["verify"]).ok();

        let again = pull(&b, &[&target]);
        assert_eq!(again.head, chain.app_digest.to_string(), "{point}");
        assert!(again.chunks_resumed > 0, "{point}: {again:?}");
        if point == "pull.assembled" {
            assert_eq!(again.chunks_downloaded, 0, "{point}: {again:?}");
        }
        assert_eq!(
            again.chunks_downloaded + again.chunks_local + again.chunks_resumed,
            written,
            "{point}: each chunk once; {again:?} against a clean pull {clean:?}"
        );
        assert!(
            again.chunks_downloaded < clean.chunks_downloaded
                && again.bytes_downloaded < clean.bytes_downloaded,
            "{point}: {again:?} against a clean pull {clean:?}"
        );
        pulled_app_is_whole(&a, &b);
        verify_content(&b);
    }
    verify_content(&a);
}

#[test]
fn tls_with_a_private_ca_and_basic_auth() {
    if !enabled() {
        return;
    }
    const USER: &str = "msb-user";
    const PASSWORD: &str = "pw-3c9f1e7a-unguessable";
    let remote = OciRegistry::start(Options::tls().with_auth(USER, PASSWORD));
    let ca = remote.ca_cert();
    let ca = ca.to_str().unwrap();
    let a = root_with_chain();
    let target = format!("{}:app", remote.repo("snaps"));
    let mut outputs = Vec::new();
    let mut check = |r: Run| {
        outputs.push(format!("{}{}", r.stdout, r.stderr));
        r
    };
    let creds = ["--username", USER, "--password-stdin"];
    let push_args = |extra: &[&[&str]]| -> Vec<String> {
        let mut v = vec!["push", "py-app", target.as_str(), "--with-parents"];
        v.extend(extra.iter().flat_map(|e| e.iter()));
        v.into_iter().map(str::to_string).collect()
    };
    let with_ca = ["--ca-cert", ca];

    // Unverifiable certificate: refused before any credential is sent.
    let r = check(run_stdin(&a, &strs(&push_args(&[&creds])), PASSWORD));
    failed(&r, 8, &remote.host());
    // No credentials, then a wrong password.
    let r = check(run(&a, &strs(&push_args(&[&with_ca]))));
    failed(&r, 9, &remote.host());
    let r = check(run_stdin(
        &a,
        &strs(&push_args(&[&with_ca, &creds])),
        "wrong-password",
    ));
    failed(&r, 9, &remote.host());
    assert!(remote.blobs().is_empty(), "nothing stored without auth");
    // The right ones.
    let r = check(run_stdin(
        &a,
        &strs(&push_args(&[&with_ca, &creds, &["--json"]])),
        PASSWORD,
    ));
    let pushed: PushReport = r.ok().json();
    assert_eq!(pushed.snapshots.len(), 2);

    let b = Reg::new();
    let pull_args = |extra: &[&str]| -> Vec<String> {
        ["pull", target.as_str(), "--ca-cert", ca]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let r = check(run(&b, &strs(&pull_args(&[]))));
    failed(&r, 9, &remote.host());
    let r = check(run_stdin(&b, &strs(&pull_args(&creds)), "wrong-password"));
    failed(&r, 9, &remote.host());
    let r = check(run(&b, &["pull", &target]));
    failed(&r, 8, &remote.host());
    // The failed pulls left no registry behind (issue 22).
    assert!(!b.root().join("registry.db").exists());
    // Credentials from the docker config, as docker writes them.
    let auth = base64(&format!("{USER}:{PASSWORD}"));
    std::fs::write(
        b.path("docker-config/config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, remote.host()),
    )
    .unwrap();
    let r = check(run(&b, &strs(&pull_args(&["--json"]))));
    let pulled: PullReport = r.ok().json();
    assert_eq!(pulled.imported.len(), 2);

    // Through a credential helper the docker config names: one that fails
    // (its stderr is quoted, exit 9), then one that answers.
    let c = Reg::new();
    let helpers = c.path("helpers");
    std::fs::create_dir_all(&helpers).unwrap();
    std::fs::create_dir_all(c.path("docker-config")).unwrap();
    std::fs::write(
        c.path("docker-config/config.json"),
        format!(r#"{{"credHelpers":{{"{}":"msbtest"}}}}"#, remote.host()),
    )
    .unwrap();
    let helper = helpers.join("docker-credential-msbtest");
    let path = format!(
        "{}:{}",
        helpers.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let with_helper = |script: &str| -> Run {
        // Installed by another process: a descriptor of ours open for
        // writing it could be inherited by a child another test forks at
        // that instant, and exec would then fail with ETXTBSY.
        let source = c.path("helper.sh");
        std::fs::write(&source, script).unwrap();
        let installed = Command::new("install")
            .args(["-m", "755"])
            .arg(&source)
            .arg(&helper)
            .status()
            .unwrap();
        assert!(installed.success());
        let mut cmd = client(&c, &strs(&pull_args(&["--json"])));
        Run::from(cmd.env("PATH", &path).output().unwrap())
    };
    let r = check(with_helper(
        "#!/bin/sh\nread server\necho 'no credentials for this host' >&2\nexit 1\n",
    ));
    failed(&r, 9, "docker-credential-msbtest");
    assert!(
        r.stderr.contains("no credentials for this host"),
        "{}",
        r.stderr
    );
    let r = check(with_helper(&format!(
        "#!/bin/sh\nread server\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}\\n' \"$server\"\n"
    )));
    let pulled: PullReport = r.ok().json();
    assert_eq!(pulled.imported.len(), 2);

    for out in &outputs {
        assert!(!out.contains(PASSWORD), "password printed: {out}");
        assert!(!out.contains(&auth), "credential printed: {out}");
    }
    for reg in [&a, &b, &c] {
        for (path, _) in reg.tree() {
            let bytes = std::fs::read(reg.root().join(&path)).unwrap_or_default();
            assert!(!contains(&bytes, PASSWORD.as_bytes()), "password in {path}");
        }
        for db in ["registry.db", "registry.db-wal", "registry.db-shm"] {
            let bytes = std::fs::read(reg.root().join(db)).unwrap_or_default();
            assert!(!contains(&bytes, PASSWORD.as_bytes()), "password in {db}");
            assert!(!contains(&bytes, auth.as_bytes()), "credential in {db}");
        }
    }
    verify_content(&a);
    verify_content(&b);
    verify_content(&c);
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn base64(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in s.as_bytes().chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Hold `args` at `point` (SIGSTOP), kill the registry, let the client go
/// on: it must fail with exit 8 naming the registry.
fn lose_registry_at(reg: &Reg, remote: &mut OciRegistry, args: &[&str], point: &str) {
    let held = reg.held_with(client(reg, args), point, Hold::Stop);
    let mut child = held.child;
    remote.stop();
    // SAFETY: a plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGCONT);
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut { held.stderr }, &mut stderr).unwrap();
    let status = child.wait().unwrap();
    let r = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr,
    };
    failed(&r, 8, &remote.host());
}

#[test]
fn a_registry_that_goes_away_mid_transfer_fails_cleanly_and_the_rerun_finishes() {
    if !enabled() {
        return;
    }
    let chain = ext4_chain();
    let mut remote = OciRegistry::start(Options::plain());
    let a = root_with_chain();
    let target = format!("{}:app", remote.repo("snaps"));
    let push_args = ["push", "py-app", &target, "--with-parents", "--insecure"];
    let a_before = rows(&a);
    lose_registry_at(&a, &mut remote, &push_args, "push.blob-stored@2");
    remote.restart();
    assert!(!tag_exists(&remote, "snaps", "app"));
    assert_eq!(rows(&a), a_before);
    let stored: BTreeSet<String> = remote.linked_blobs().into_iter().collect();
    assert!(!stored.is_empty());
    let again = push(&a, &["py-app", &target, "--with-parents"]);
    uploaded_exactly_the_new_blobs(&remote, &stored, &again);

    let holding_the_parent = || {
        let r = Reg::new();
        r.run(&["add", chain.base.to_str().unwrap()]).ok();
        r
    };
    let clean = pull(&holding_the_parent(), &[&target]);
    assert!(clean.chunks_downloaded >= 2, "{clean:?}");
    let b = holding_the_parent();
    let before = (tree_outside_staging(&b), rows(&b));
    // Chunks copied from the parent come first, then the downloads: stop
    // after the first download. The image is not here (the parent was
    // added without it), so whatever the ranges held, the pull still has
    // the registry to ask for it.
    lose_registry_at(
        &b,
        &mut remote,
        &["pull", &target, "--insecure"],
        &format!("pull.chunk-written@{}", clean.chunks_local + 1),
    );
    assert_eq!((tree_outside_staging(&b), rows(&b)), before);
    b.run(&["verify"]).ok();
    remote.restart();
    let pulled = pull(&b, &[&target]);
    assert_eq!(pulled.imported, [chain.app_digest.to_string()]);
    assert!(
        pulled.chunks_resumed > clean.chunks_local
            && pulled.chunks_downloaded < clean.chunks_downloaded,
        "the rerun keeps what was downloaded: {pulled:?} against {clean:?}"
    );
    pulled_app_is_whole(&a, &b);
    verify_content(&a);
    verify_content(&b);
}

#[test]
fn skopeo_reads_what_we_push() {
    if !enabled() {
        return;
    }
    let chain = ext4_chain();
    let remote = OciRegistry::start(Options::plain());
    let a = root_with_chain();
    let target = format!("{}:app", remote.repo("team/snaps"));
    let pushed = push(&a, &["py-app", &target, "--with-parents", "--with-image"]);
    let skopeo = |args: &[&str]| -> Vec<u8> {
        let out = Command::new("skopeo").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let source = format!("docker://{target}");
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &source]);
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let (app, base) = (chain.app_digest.to_string(), chain.base_digest.to_string());
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.microsandbox.snapshot.v1"
    );
    assert_eq!(manifest["config"]["digest"], app.as_str());
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.microsandbox.snapshot.manifest.v1+json"
    );
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.microsandbox.snapshot.chunkmap.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    let packs: BTreeSet<&str> = layers[1..]
        .iter()
        .map(|l| {
            assert_eq!(
                l["mediaType"],
                "application/vnd.microsandbox.snapshot.pack.v1+zstd"
            );
            l["digest"].as_str().unwrap()
        })
        .collect();
    assert_eq!(packs.len(), layers.len() - 1, "each pack once");
    let annotations = &manifest["annotations"];
    assert_eq!(annotations["org.opencontainers.image.title"], "py-app");
    assert_eq!(
        annotations["dev.microsandbox.snapshot.digest"],
        app.as_str()
    );
    assert_eq!(
        annotations["dev.microsandbox.snapshot.parent"],
        base.as_str()
    );
    let base_manifest = &pushed
        .snapshots
        .iter()
        .find(|s| s.digest == base)
        .unwrap()
        .manifest_digest;
    assert_eq!(manifest["subject"]["digest"], base_manifest.as_str());

    let image = pushed.image.as_ref().unwrap();
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}:{}", remote.repo("team/snaps"), image.tag),
    ]);
    let image_manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        image_manifest["artifactType"],
        "application/vnd.microsandbox.image-cache.v1"
    );

    let layout = a.path("oci-layout");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &source,
        &format!("oci:{}:app", layout.display()),
    ]);
    let config = std::fs::read(layout.join("blobs/sha256").join(chain.app_digest.hex())).unwrap();
    assert_eq!(
        config,
        std::fs::read(a.root().join("snapshots/py-app/manifest.json")).unwrap(),
        "the config blob is the snapshot's canonical manifest"
    );
    for layer in layers {
        let digest = layer["digest"].as_str().unwrap();
        let bytes = std::fs::read(layout.join("blobs/sha256").join(hex(digest))).unwrap();
        assert_eq!(Digest::of(&bytes).to_string(), digest);
        assert_eq!(bytes.len() as u64, layer["size"].as_u64().unwrap());
    }
    verify_content(&a);
}

#[test]
fn a_pulled_title_held_here_falls_back_to_the_prefix_and_says_why() {
    if !enabled() {
        return;
    }
    let chain = ext4_chain();
    let a = root_with_chain();
    let remote = OciRegistry::start(Options::plain());
    let target = remote.repo("snaps:app");
    push(&a, &["py-app", &target, "--with-parents"]);

    // Here "py-app" names another indexed snapshot, and "py-base" is held
    // by an intact snapshot the index lost: a directory without a row,
    // which the install never moves.
    let b = Reg::new();
    let cache = b.path("other-cache");
    let image = make_image_cache(&cache, "other:1", 9, &[4096]);
    add_pinned(&b, "py-app", &image, "other:1", &cache);
    let lost_dir = b.root().join("snapshots/py-base");
    let lost = make_snapshot(&lost_dir, &SnapSpec::new(&image).label("lost", "yes"));
    let lost_files = crate::failclosed::files_of(&lost_dir);

    // A name someone chose is still refused before anything is fetched,
    // and nothing here changes.
    let before = b.tree();
    failed(
        &run(&b, &["pull", &target, "--insecure", "--name", "py-app"]),
        4,
        "py-app",
    );
    assert_eq!(b.tree(), before);

    let r = run(&b, &["pull", &target, "--insecure", "--json"]).ok();
    let report: serde_json::Value = r.json();
    assert_eq!(report["head"], chain.app_digest.to_string(), "{report}");
    let fallbacks = report["name_fallbacks"].as_array().unwrap();
    assert_eq!(fallbacks.len(), 2, "{report}");
    for (f, (digest, carried, why)) in fallbacks.iter().zip([
        (
            chain.app_digest,
            "py-app",
            "it is taken by snapshot".to_string(),
        ),
        (
            chain.base_digest,
            "py-base",
            format!("intact snapshot {lost}"),
        ),
    ]) {
        let prefix = digest.archive_prefix();
        assert_eq!(f["digest"], digest.to_string(), "{report}");
        assert_eq!(f["carried"], carried, "{report}");
        assert_eq!(f["name"], prefix, "{report}");
        let reason = f["reason"].as_str().unwrap();
        assert!(reason.contains(&why), "{report}");
        let warning = format!("came named \"{carried}\", but {reason}; it is named {prefix}");
        assert!(r.stderr.contains(&warning), "{}", r.stderr);
    }
    assert_eq!(
        report["name"],
        chain.app_digest.archive_prefix(),
        "{report}"
    );
    assert_eq!(crate::failclosed::files_of(&lost_dir), lost_files);
    for digest in [chain.base_digest, chain.app_digest] {
        let dir = b.root().join("snapshots").join(digest.archive_prefix());
        assert_eq!(
            std::fs::read(dir.join("upper.ext4")).unwrap(),
            std::fs::read(a.root().join(if digest == chain.app_digest {
                "snapshots/py-app/upper.ext4"
            } else {
                "snapshots/py-base/upper.ext4"
            }))
            .unwrap()
        );
    }
}
