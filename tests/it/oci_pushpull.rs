//! Issue 24, push and pull: hostile chunk maps (bases no file uses, a short
//! final chunk reused, a file the manifest does not name), a parent map
//! that lies to a pushing child, reserved tags, a taken `--name`, Ctrl-C,
//! `rm` during a push, the push summary and the verification bar. Through
//! the binary against the fake of [`crate::oci_fake`], the library where a
//! progress recorder is needed. Push from a read-only root.

use std::io::Write as _;
use std::process::{Command, Stdio};

use msb_registry::model::digest::Digest;
use msb_registry::sample::mixed_bytes;
use serde_json::{Value, json};

use crate::oci_fake::*;
use crate::util::*;

/// Serve `map` as the chunk map of the snapshot tagged `name` (and its
/// `sha256-<hex>` tag), with `layers` after it in its manifest.
fn serve(fake: &Fake, name: &str, digest: &Digest, map: &Value, packs: &[Value]) {
    let (_, mut manifest) = fake.manifest(name);
    let bytes = serde_json::to_vec(map).unwrap();
    let mut layers = vec![json!({
        "mediaType": "application/vnd.microsandbox.snapshot.chunkmap.v1+json",
        "digest": fake.put_blob(&bytes),
        "size": bytes.len(),
    })];
    layers.extend(packs.iter().cloned());
    manifest["layers"] = layers.into();
    let tag = format!("sha256-{}", digest.hex());
    fake.put_manifest_bytes(manifest.to_string().as_bytes(), None, &[name, &tag]);
}

#[test]
fn a_map_may_name_only_the_snapshots_own_files() {
    let p = Pushed::new();
    p.rewrite(
        |m| {
            let mut notes = m["files"][0].clone();
            notes["path"] = "notes.txt".into();
            m["files"].as_array_mut().unwrap().push(notes);
        },
        |_| {},
    );
    p.refused(6, &["notes.txt", "not in the snapshot"]);
    p.retag(&p.manifest_bytes);
    p.pulls();
}

#[test]
fn a_short_final_chunk_cannot_stand_in_for_a_whole_one() {
    // 4 KiB chunks, an upper of 1 MiB + 100 bytes: its last chunk is 100
    // bytes long. Used at offset 0 too, it would be written short there;
    // a whole chunk used at the last offset would run 3996 bytes past the
    // upper's end.
    let fake = Fake::start();
    let env = Env::new();
    let src = Reg::new();
    let mut spec = sample_spec(&src, "short");
    spec.len = (1 << 20) + 100;
    spec.data = vec![(0, mixed_bytes(3, 4096)), (1 << 20, mixed_bytes(4, 100))];
    let digest = add(&src, "short", &spec);
    push(&env, &src, "short", &fake);
    // The map cut at 4 KiB: chunk 0 the first 4 KiB, chunk 1 the last 100 bytes.
    let (a, b) = (mixed_bytes(3, 4096), mixed_bytes(4, 100));
    let (fa, fb) = (
        zstd::bulk::compress(&a, 3).unwrap(),
        zstd::bulk::compress(&b, 3).unwrap(),
    );
    let pack = [fa.clone(), fb.clone()].concat();
    let pack_digest = fake.put_blob(&pack);
    let packs = [json!({"mediaType": PACK, "digest": pack_digest, "size": pack.len()})];
    let map = |extents: Value| {
        json!({
            "schema": 1,
            "snapshot": digest.to_string(),
            "chunk_size": 4096,
            "compression": "zstd",
            "packs": [pack_digest],
            "chunks": [
                [Digest::of(&a).to_string(), 0, 0, fa.len()],
                [Digest::of(&b).to_string(), 0, fa.len(), fb.len()],
            ],
            "files": [{"path": "upper.ext4", "size": (1 << 20) + 100, "extents": extents}],
        })
    };
    let dst = populated();
    let target = fake.at("short");
    for chunk in [0, 1] {
        serve(
            &fake,
            "short",
            &digest,
            &map(json!([[0, chunk], [1 << 20, chunk]])),
            &packs,
        );
        refused(&env, &dst, &target, 6, &["4096 bytes", "100 bytes"]);
    }
    // The honest map at 4 KiB: pulled, the upper its manifest's size.
    serve(
        &fake,
        "short",
        &digest,
        &map(json!([[0, 0], [1 << 20, 1]])),
        &packs,
    );
    let run = env.run(&dst, &["pull", &target, "--insecure", "--json"], b"");
    let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
    assert_eq!(report["head"], digest.to_string());
    let upper = dst.root().join("snapshots/short/upper.ext4");
    assert_eq!(std::fs::metadata(upper).unwrap().len(), (1 << 20) + 100);
    dst.run(&["verify", "--content"]).ok();
}

/// zstd of `bytes` with `base` as its prefix, as push sends a delta.
fn delta(bytes: &[u8], base: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(&mut out, 3, base).unwrap();
    enc.include_contentsize(true).unwrap();
    enc.set_pledged_src_size(Some(bytes.len() as u64)).unwrap();
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap();
    out
}

/// Run the binary under GNU time; its outcome and peak RSS in KiB (`None`
/// without /usr/bin/time).
fn measuring_rss(env: &Env, reg: &Reg, args: &[&str]) -> (Run, Option<u64>) {
    let time = std::path::Path::new("/usr/bin/time");
    if !time.exists() {
        return (env.run(reg, args, b""), None);
    }
    let rss = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(time)
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(rss.path())
        .arg(bin())
        .arg("--root")
        .arg(reg.root())
        .args(args)
        .env("DOCKER_CONFIG", env.docker())
        .env("HOME", env.dir.path())
        .env_remove("MSB_REGISTRY_ROOT")
        .env_remove("MSB_FAILPOINT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let kib = std::fs::read_to_string(rss.path())
        .ok()
        .and_then(|s| s.trim().lines().last().and_then(|l| l.parse().ok()));
    (Run::from(out), kib)
}

#[test]
fn delta_bases_no_file_uses_are_not_held_in_memory() {
    // 4 MiB chunks, 48 of them in the upper, each a delta against its own
    // base that no file uses: 192 MiB of decoded bases from a pack of a
    // few KiB, which pull once kept in memory.
    const N: u64 = 48;
    const CHUNK: u64 = 4 << 20;
    let fake = Fake::start();
    let env = Env::new();
    let src = Reg::new();
    let mut spec = sample_spec(&src, "bases");
    spec.len = N * CHUNK;
    spec.data = (0..N)
        .map(|i| (i * CHUNK, format!("chunk {i} of the upper").into_bytes()))
        .collect();
    let digest = add(&src, "bases", &spec);
    push(&env, &src, "bases", &fake);
    let mut pack = Vec::new();
    let mut chunks = Vec::new();
    let mut deltas = Vec::new();
    let mut extents = Vec::new();
    for i in 0..N {
        let mut chunk = vec![0u8; CHUNK as usize];
        let marker = format!("chunk {i} of the upper");
        chunk[..marker.len()].copy_from_slice(marker.as_bytes());
        let base = vec![i as u8 + 1; CHUNK as usize];
        for (bytes, frame) in [
            (&base, zstd::bulk::compress(&base, 3).unwrap()),
            (&chunk, delta(&chunk, &base)),
        ] {
            chunks.push(json!([
                Digest::of(bytes).to_string(),
                0,
                pack.len(),
                frame.len()
            ]));
            pack.extend_from_slice(&frame);
        }
        deltas.push(json!([2 * i + 1, 2 * i]));
        extents.push(json!([i * CHUNK, 2 * i + 1]));
    }
    let pack_digest = fake.put_blob(&pack);
    let map = json!({
        "schema": 1,
        "snapshot": digest.to_string(),
        "chunk_size": CHUNK,
        "compression": "zstd",
        "packs": [pack_digest],
        "chunks": chunks,
        "files": [{"path": "upper.ext4", "size": N * CHUNK, "extents": extents}],
        "deltas": deltas,
    });
    let pack_layer = json!({"mediaType": PACK, "digest": pack_digest, "size": pack.len()});
    serve(&fake, "bases", &digest, &map, &[pack_layer]);
    let dst = populated();
    let (run, kib) = measuring_rss(
        &env,
        &dst,
        &["pull", &fake.at("bases"), "--insecure", "--json"],
    );
    let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
    assert_eq!(report["head"], digest.to_string());
    assert_eq!(report["chunks_downloaded"], N, "{report}");
    eprintln!("pull of {N} deltas over unused 4 MiB bases: peak RSS {kib:?} KiB");
    if let Some(kib) = kib {
        assert!(kib <= 64 << 10, "peak RSS {kib} KiB");
    }
    assert!(open_pulls(&dst).is_empty());
    let bases: Vec<_> = walkdir_files(&dst.root().join("staging"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bases"))
        .collect();
    assert!(bases.is_empty(), "scratch files left: {bases:?}");
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn a_child_push_checks_what_the_parent_map_there_claims() {
    // The parent was pushed from another machine; someone rewrote its map
    // there to claim it holds the child's new chunk (pointing at a frame
    // of another chunk). The child's push must send that chunk anyway.
    let p = Pushed::new();
    let (other, base) = source("base");
    let mut spec = sample_spec(&other, "child").parent(base);
    spec.data = vec![(0, mixed_bytes(1, 200_000)), (5 << 20, vec![9; 4096])];
    add(&other, "child", &spec);
    let mut new_chunk = vec![0u8; 128 << 10];
    new_chunk[..4096].fill(9);
    let claimed = Digest::of(&new_chunk).to_string();
    p.rewrite(
        |m| {
            let mut lie = m["chunks"][0].clone();
            lie[0] = claimed.clone().into();
            m["chunks"].as_array_mut().unwrap().push(lie);
        },
        |_| {},
    );
    let target = p.fake.at("child");
    let run = p.env.run(
        &other,
        &["push", "child", &target, "--insecure", "--json"],
        b"",
    );
    let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
    assert!(report["chunks_uploaded"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["chunks_present"].as_u64().unwrap() >= 2, "{report}");
    let dst = Reg::new();
    p.env.run(&dst, &["pull", &target, "--insecure"], b"").ok();
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn reserved_tags_are_refused_with_2() {
    let fake = Fake::start();
    let env = Env::new();
    let (src, digest) = source("base");
    let other = Digest::of(b"another snapshot").hex();
    for tag in [format!("sha256-{other}"), format!("image-sha256-{other}")] {
        let run = env.run(&src, &["push", "base", &fake.at(&tag), "--insecure"], b"");
        failed(&run, 2, &[&tag, "reserved"]);
    }
    let tags = fake.control(json!({"op": "tags", "repo": REPO}));
    assert!(
        tags["tags"].as_object().is_none_or(|t| t.is_empty()),
        "{tags}"
    );
    // Its own identity tag is no one else's.
    let own = format!("sha256-{}", digest.hex());
    env.run(&src, &["push", "base", &fake.at(&own), "--insecure"], b"")
        .ok();
    src.run(&["verify", "--content"]).ok();
}

#[test]
fn a_taken_name_is_refused_before_any_chunk_map_or_pack_is_fetched() {
    let p = Pushed::new();
    p.fake.control(json!({"op": "reset_log"}));
    let before = (p.dst.tree(), index(&p.dst));
    let run = p.env.run(
        &p.dst,
        &["pull", &p.fake.at("base"), "--insecure", "--name", "other"],
        b"",
    );
    failed(&run, 4, &["other", "already names"]);
    assert_eq!((p.dst.tree(), index(&p.dst)), before, "registry changed");
    let map = layer(&p.manifest, 0);
    let fetched: Vec<Value> = p
        .fake
        .log()
        .into_iter()
        .filter(|e| {
            let path = e["path"].as_str().unwrap_or("");
            path.contains(&map) || path.contains(&layer(&p.manifest, 1))
        })
        .collect();
    assert!(fetched.is_empty(), "fetched before refusing: {fetched:?}");
}

#[test]
fn a_snapshot_removed_during_its_push_is_exit_3() {
    let fake = Fake::start();
    let env = Env::new();
    let src = Reg::new();
    // Two packs: the push reads the second after the first is stored.
    let mut spec = sample_spec(&src, "wide");
    spec.len = 12 << 20;
    spec.data = vec![(0, mixed_bytes(5, 8 << 20))];
    add(&src, "wide", &spec);
    let target = fake.at("wide");
    let mut cmd = src.command(&["push", "wide", &target, "--insecure", "--jobs", "1"]);
    cmd.env("DOCKER_CONFIG", env.docker())
        .env("HOME", env.dir.path());
    let held = src.held_with(cmd, "push.blob-stored@1", Hold::Stop);
    src.run(&["rm", "wide"]).ok();
    let mut child = held.child;
    // SAFETY: a plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut { held.stderr }, &mut stderr).unwrap();
    let run = Run {
        code: child.wait().unwrap().code().unwrap_or(-1),
        stdout: String::new(),
        stderr,
    };
    failed(&run, 3, &["wide", "removed while it was being pushed"]);
    let tags = fake.control(json!({"op": "tags", "repo": REPO}));
    assert!(tags["tags"].get("wide").is_none(), "{tags}");
}

/// Send `signal` to the binary once the fake has seen a blob request, and
/// return its outcome.
fn interrupted(env: &Env, reg: &Reg, fake: &Fake, args: &[&str], signal: i32) -> Run {
    let child = reg
        .command(args)
        .env("DOCKER_CONFIG", env.docker())
        .env("HOME", env.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while !fake
        .log()
        .iter()
        .any(|e| e["path"].as_str().unwrap_or("").contains("/blobs/"))
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
    Run::from(child.wait_with_output().unwrap())
}

#[test]
fn ctrl_c_and_sigterm_end_push_and_pull_with_one_line_and_130_or_143() {
    let fake = Fake::start();
    let env = Env::new();
    let (src, digest) = source("base");
    fake.config(json!({"stall": 30}));
    let push = ["push", "base", &fake.at("base"), "--insecure"];
    let run = interrupted(&env, &src, &fake, &push, libc::SIGINT);
    failed(
        &run,
        130,
        &[
            "interrupted by SIGINT",
            "no tag names an incomplete snapshot",
        ],
    );
    let tags = fake.control(json!({"op": "tags", "repo": REPO}));
    assert!(tags["tags"].get("base").is_none(), "{tags}");
    fake.config(json!({"stall": 0}));
    push_ok(&env, &src, &fake);

    let dst = populated();
    fake.control(json!({"op": "reset_log"}));
    fake.config(json!({"stall": 30}));
    let pull = ["pull", &fake.at("base"), "--insecure"];
    let run = interrupted(&env, &dst, &fake, &pull, libc::SIGTERM);
    failed(&run, 143, &["interrupted by SIGTERM", "a rerun resumes"]);
    fake.config(json!({"stall": 0}));
    let run = env.run(
        &dst,
        &["pull", &fake.at("base"), "--insecure", "--json"],
        b"",
    );
    let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
    assert_eq!(report["head"], digest.to_string());
    dst.run(&["verify", "--content"]).ok();
}

fn push_ok(env: &Env, src: &Reg, fake: &Fake) {
    env.run(src, &["push", "base", &fake.at("base"), "--insecure"], b"")
        .ok();
}

#[test]
fn the_push_summary_counts_chunks_present_and_bytes_not_sent() {
    let fake = Fake::start();
    let env = Env::new();
    let (src, base) = source("base");
    push_ok(&env, &src, &fake);
    let mut spec = sample_spec(&src, "child").parent(base);
    spec.data = vec![
        (0, mixed_bytes(1, 200_000)),
        (1 << 20, vec![0xab; 64 * 1024]),
        (3 << 20, mixed_bytes(2, 300_000)),
        (5 << 20, vec![9; 4096]),
    ];
    add(&src, "child", &spec);
    let run = env.run(
        &src,
        &["push", "child", &fake.at("child"), "--insecure"],
        b"",
    );
    let line = run.ok().stdout.lines().next().unwrap().to_string();
    assert!(line.contains("1 chunk sent"), "{line}");
    assert!(line.contains("chunks already there"), "{line}");
    assert!(line.contains("not sent"), "{line}");
    let json = env.run(
        &src,
        &["push", "child", &fake.at("child"), "--insecure", "--json"],
        b"",
    );
    let report: Value = serde_json::from_str(&json.ok().stdout).unwrap();
    assert_eq!(report["chunks_uploaded"], 0, "{report}");
    assert!(
        report["bytes_not_sent"].as_u64().unwrap() >= 564_000,
        "{report}"
    );
}

/// Every report a progress bar would get.
#[derive(Default)]
struct Recorder {
    events: std::sync::Mutex<Vec<(String, u64)>>,
}

impl msb_registry::Progress for Recorder {
    fn start(&self, phase: &str, total: Option<u64>) {
        let total = total.unwrap_or(0);
        self.events
            .lock()
            .unwrap()
            .push((format!("start {phase}"), total));
    }
    fn advance(&self, bytes: u64) {
        self.events.lock().unwrap().push(("advance".into(), bytes));
    }
    fn finish(&self) {
        self.events.lock().unwrap().push(("finish".into(), 0));
    }
}

#[test]
fn the_pull_bar_moves_while_a_large_sparse_upper_is_verified() {
    let fake = Fake::start();
    let env = Env::new();
    let src = Reg::new();
    let mut spec = sample_spec(&src, "sparse");
    spec.len = 256 << 20;
    spec.data = vec![(0, mixed_bytes(6, 100_000)), (200 << 20, vec![7; 4096])];
    let digest = add(&src, "sparse", &spec);
    push(&env, &src, "sparse", &fake);
    let dst = Reg::new();
    dst.run(&["gc"]).ok();
    let mut registry = msb_registry::Registry::open(dst.root()).unwrap();
    let source = msb_registry::remote::RemoteRef::parse(&fake.at("sparse")).unwrap();
    let opts = msb_registry::PullOptions {
        client: msb_registry::remote::ClientOptions {
            insecure: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let rec = Recorder::default();
    let report = registry.pull(&source, &opts, &rec).unwrap();
    assert_eq!(report.head, digest);
    let events = rec.events.lock().unwrap();
    let start = events
        .iter()
        .position(|e| e.0 == "start verify")
        .expect("a verify phase");
    let total = events[start].1;
    assert!(total >= 256 << 20, "the logical bytes hashed: {total}");
    let steps: Vec<u64> = events[start + 1..]
        .iter()
        .take_while(|e| e.0 == "advance")
        .map(|e| e.1)
        .collect();
    assert_eq!(steps.iter().sum::<u64>(), total, "the bar ends full");
    assert!(steps.len() >= 16, "it moves in steps: {}", steps.len());
    assert_eq!(events[start + 1 + steps.len()].0, "finish");
    drop(registry);
    dst.run(&["verify", "--content"]).ok();
}

/// Every file under `dir` (none when it does not exist).
fn walkdir_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walkdir_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `len` pseudo-random bytes: zstd cannot shrink them.
fn incompressible(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn push_and_pull_bound_bytes_in_flight_not_requests() {
    // 96 MiB that does not compress, 24 packs of 4 MiB, --jobs 32 to a
    // slow registry: every pack could be in flight at once, and once was.
    let fake = Fake::start();
    let env = Env::new();
    let src = Reg::new();
    let mut spec = sample_spec(&src, "noise");
    spec.len = 100 << 20;
    spec.data = vec![(0, incompressible(7, 96 << 20))];
    add(&src, "noise", &spec);
    fake.config(json!({"stall": 0.3}));
    let target = fake.at("noise");
    let (run, kib) = measuring_rss(
        &env,
        &src,
        &[
            "push",
            "noise",
            &target,
            "--insecure",
            "--jobs",
            "32",
            "--json",
        ],
    );
    let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
    assert!(report["blobs_uploaded"].as_u64().unwrap() >= 24, "{report}");
    eprintln!("push of 96 MiB incompressible, --jobs 32: peak RSS {kib:?} KiB");
    if let Some(kib) = kib {
        assert!(kib <= 64 << 10, "push peak RSS {kib} KiB");
    }
    let dst = Reg::new();
    let (run, kib) = measuring_rss(
        &env,
        &dst,
        &["pull", &target, "--insecure", "--jobs", "32", "--json"],
    );
    run.ok();
    eprintln!("pull of it, --jobs 32: peak RSS {kib:?} KiB");
    if let Some(kib) = kib {
        assert!(kib <= 64 << 10, "pull peak RSS {kib} KiB");
    }
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn a_push_from_a_read_only_root_works_and_records_nothing() {
    let fake = Fake::start();
    let env = Env::new();
    let src = Reg::new();
    let Some(mount) = crate::storage::on_tmpfs(&src, "64m") else {
        return;
    };
    let mut spec = sample_spec(&src, "app");
    spec.data = vec![
        (0, mixed_bytes(8, 300_000)),
        (2 << 20, mixed_bytes(9, 70_000)),
    ];
    let digest = add(&src, "app", &spec);
    let before = (
        src.tree(),
        std::fs::read(src.root().join("registry.db")).unwrap(),
    );
    mount.remount(&src.root(), "remount,ro");
    let first = push(&env, &src, "app", &fake);
    assert_eq!(first["holdings_recorded"], false);
    assert!(first["blobs_uploaded"].as_u64().unwrap() > 0, "{first}");
    // Nothing was recorded: the second push finds every blob by HEAD.
    let again = push(&env, &src, "app", &fake);
    assert_eq!(again["blobs_uploaded"], 0, "{again}");
    assert_eq!(again["bytes_uploaded"], 0, "{again}");
    mount.remount(&src.root(), "remount,rw");
    let after = (
        src.tree(),
        std::fs::read(src.root().join("registry.db")).unwrap(),
    );
    assert_eq!(after, before, "a push from a read-only root changed it");
    let dst = Reg::new();
    let run = env.run(
        &dst,
        &["pull", &fake.at("app"), "--insecure", "--json"],
        b"",
    );
    let pulled: Value = serde_json::from_str(&run.ok().stdout).unwrap();
    assert_eq!(pulled["head"], digest.to_string());
    dst.run(&["verify", "--content"]).ok();
    // Writable again: what the repository holds is recorded.
    assert_eq!(push(&env, &src, "app", &fake)["holdings_recorded"], true);
    src.run(&["verify", "--content"]).ok();
}
