//! `push` and `pull` against a hostile OCI registry (README "Hostile
//! registries"): a scriptable fake (tests/fixtures/oci_server.py) that first
//! stores a real push honestly, then serves wrong digests, forged frames, a
//! non-canonical config, lying chunk maps, endless bodies, redirects to
//! another port, failures, and basic or bearer-token auth. Each refusal has
//! its exit code, one line naming what was wrong, and leaves the pulling
//! registry as it was; credentials come from flags, the docker config and
//! credential helpers, and are never printed or stored.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use msb_registry::digest::Digest;
use msb_registry::sample::mixed_bytes;
use serde_json::{Value, json};

use crate::util::*;

/// The repository every test pushes to.
const REPO: &str = "team/snaps";
const USER: &str = "msb-user";
const PASSWORD: &str = "s3cret-Pa55w0rd-xyzzy";

/// The fake registry, a python3 process on two random ports of 127.0.0.1:
/// the registry itself and the listener its blob redirects point at.
struct Fake {
    child: Child,
    port: u16,
}

impl Fake {
    fn start() -> Fake {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oci_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the fake registry");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Value = serde_json::from_str(&line).expect("the fake prints its ports");
        Fake {
            child,
            port: ports["port"].as_u64().unwrap() as u16,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `HOST:PORT/team/snaps:TAG`.
    fn at(&self, tag: &str) -> String {
        format!("{}/{REPO}:{tag}", self.host())
    }

    /// `HOST:PORT/team/snaps@DIGEST`.
    fn at_digest(&self, digest: &str) -> String {
        format!("{}/{REPO}@{digest}", self.host())
    }

    /// One HTTP/1.1 request with `Connection: close`; status and body.
    fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.host(),
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&out[..split]);
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, out[split + 4..].to_vec())
    }

    fn control(&self, req: Value) -> Value {
        let (status, body) = self.http("POST", "/_control", req.to_string().as_bytes());
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "control {req}: {v}");
        v
    }

    fn config(&self, mut settings: Value) {
        settings["op"] = "config".into();
        self.control(settings);
    }

    /// Every request the fake has seen, in order.
    fn log(&self) -> Vec<Value> {
        let (_, body) = self.http("GET", "/_control/log", b"");
        serde_json::from_slice(&body).unwrap()
    }

    /// The stored manifest a tag or digest names: its digest and JSON.
    fn manifest(&self, reference: &str) -> (String, Value) {
        let v = self.control(json!({"op": "get_manifest", "repo": REPO, "reference": reference}));
        let bytes = hex::decode(v["data_hex"].as_str().unwrap()).unwrap();
        (
            v["digest"].as_str().unwrap().to_string(),
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    fn manifest_bytes(&self, reference: &str) -> Vec<u8> {
        let v = self.control(json!({"op": "get_manifest", "repo": REPO, "reference": reference}));
        hex::decode(v["data_hex"].as_str().unwrap()).unwrap()
    }

    fn blob(&self, digest: &str) -> Vec<u8> {
        let v = self.control(json!({"op": "get_blob", "digest": digest}));
        hex::decode(v["data_hex"].as_str().unwrap()).unwrap()
    }

    /// Store `bytes` as a blob of the repository; returns its digest.
    fn put_blob(&self, bytes: &[u8]) -> String {
        let v =
            self.control(json!({"op": "put_blob", "repo": REPO, "data_hex": hex::encode(bytes)}));
        v["digest"].as_str().unwrap().to_string()
    }

    /// Store `bytes` as the blob `digest` (not theirs) of the repository.
    fn put_blob_as(&self, bytes: &[u8], digest: &str) {
        self.control(json!({"op": "put_blob", "repo": REPO, "data_hex": hex::encode(bytes), "digest": digest}));
    }

    /// Store raw manifest bytes under `digest` (their own digest when
    /// `None`) and point `tags` at it; returns the digest used.
    fn put_manifest_bytes(&self, bytes: &[u8], digest: Option<&str>, tags: &[&str]) -> String {
        let mut req = json!({
            "op": "put_manifest", "repo": REPO, "data_hex": hex::encode(bytes),
            "media_type": "application/vnd.oci.image.manifest.v1+json", "tags": tags,
        });
        if let Some(d) = digest {
            req["digest"] = d.into();
        }
        self.control(req)["digest"].as_str().unwrap().to_string()
    }

    fn corrupt_blob(&self, digest: &str) {
        self.control(json!({"op": "corrupt_blob", "digest": digest}));
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A registry holding one snapshot, `name`, whose upper has several
/// distinct data chunks (mixed bytes at 0, 1 MiB and 3 MiB).
fn source(name: &str) -> (Reg, Digest) {
    let reg = Reg::new();
    let mut spec = sample_spec(&reg, name);
    spec.data = vec![
        (0, mixed_bytes(1, 200_000)),
        (1 << 20, vec![0xab; 64 * 1024]),
        (3 << 20, mixed_bytes(2, 300_000)),
    ];
    let digest = add(&reg, name, &spec);
    (reg, digest)
}

/// The sample builder's spec for `name`, pinned to an image written beside
/// `reg` (not installed: `add` runs without `--cache-dir`).
fn sample_spec(reg: &Reg, name: &str) -> SnapSpec {
    let image = make_image_cache(&reg.path("src-cache"), "python:3.12", 7, &[16384]);
    SnapSpec::new(&image).label("name", name)
}

/// Write the snapshot `spec` and `add` it to `reg` as `name`; its digest.
fn add(reg: &Reg, name: &str, spec: &SnapSpec) -> Digest {
    let dir = reg.path(&format!("src/{name}"));
    let digest = make_snapshot(&dir, spec);
    reg.run(&["add", dir.to_str().unwrap(), "--name", name])
        .ok();
    digest
}

/// A registry that already holds an unrelated snapshot (no chunk in common
/// with [`source`]'s), so "unchanged" means something.
fn populated() -> Reg {
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("other-cache"), "alpine:3.20", 3, &[8192]);
    let mut spec = SnapSpec::new(&image).label("name", "other");
    spec.data = vec![(2 << 20, mixed_bytes(99, 50_000))];
    add(&reg, "other", &spec);
    reg
}

/// An empty DOCKER_CONFIG and HOME, so no credentials of the machine's
/// user take part.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(env.docker()).unwrap();
        env
    }

    fn docker(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn write_config(&self, config: &Value) {
        std::fs::write(self.docker().join("config.json"), config.to_string()).unwrap();
    }

    /// Run the binary against `reg` in this environment, with `stdin`.
    fn run(&self, reg: &Reg, args: &[&str], stdin: &[u8]) -> Run {
        let path = format!(
            "{}:{}",
            self.bin().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = reg
            .command(args)
            .env("DOCKER_CONFIG", self.docker())
            .env("HOME", self.dir.path())
            .env("PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        let _ = pipe.write_all(stdin);
        drop(pipe);
        Run::from(child.wait_with_output().unwrap())
    }
}

/// stderr without the `--insecure` warning.
fn error_lines(run: &Run) -> Vec<&str> {
    run.stderr
        .lines()
        .filter(|l| !l.starts_with("warning: --insecure: plain HTTP"))
        .collect()
}

/// Assert `run` failed with `code` and one line of error containing every
/// one of `texts`.
#[track_caller]
fn failed(run: &Run, code: i32, texts: &[&str]) {
    eprintln!("exit {}: {}", run.code, run.stderr.trim_end());
    assert_eq!(
        run.code, code,
        "exit code\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    let lines = error_lines(run);
    assert_eq!(lines.len(), 1, "error is one line: {:?}", run.stderr);
    for t in texts {
        assert!(lines[0].contains(t), "stderr {:?} lacks {t:?}", run.stderr);
    }
}

/// Push `name` from `reg` to the fake, anonymously; returns the --json
/// report.
fn push(env: &Env, reg: &Reg, name: &str, fake: &Fake) -> Value {
    let run = env.run(
        reg,
        &["push", name, &fake.at(name), "--insecure", "--json"],
        b"",
    );
    serde_json::from_str(&run.ok().stdout).unwrap()
}

/// Pull `source` into `dst` and assert it is refused with `code` and every
/// one of `texts`, the registry exactly as it was (a refused pull keeps no
/// staging), and verify clean.
#[track_caller]
fn refused(env: &Env, dst: &Reg, source: &str, code: i32, texts: &[&str]) {
    let before = (dst.tree(), index(dst));
    let run = env.run(dst, &["pull", source, "--insecure"], b"");
    failed(&run, code, texts);
    assert_eq!((dst.tree(), index(dst)), before, "registry changed");
    assert!(open_pulls(dst).is_empty(), "a pull was left open");
    dst.run(&["verify", "--content"]).ok();
}

/// The index as text: snapshots, images, cache files, and what it knows of
/// remote repositories.
fn index(reg: &Reg) -> String {
    let remote: Vec<Value> = reg.json(&[
        "sql",
        "SELECT * FROM remote_blobs UNION ALL SELECT registry, repository, chunk, pack, offset FROM remote_chunks",
    ]);
    format!("{}{remote:?}", reg.dump())
}

/// Pulls whose staging is kept for a rerun: (id, source).
fn open_pulls(reg: &Reg) -> Vec<(String, String)> {
    let rows: Vec<Value> = reg.json(&[
        "sql",
        "SELECT id, source FROM imports WHERE state = 'staging'",
    ]);
    rows.iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The digest of layer `i` (0: the chunk map) of a manifest.
fn layer(manifest: &Value, i: usize) -> String {
    manifest["layers"][i]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The OCI media type of a pack of chunk frames.
const PACK: &str = "application/vnd.microsandbox.snapshot.pack.v1+zstd";

/// One snapshot (`base`) pushed honestly to a fake, its manifest and chunk
/// map as pushed, and a populated registry to pull it into.
struct Pushed {
    fake: Fake,
    env: Env,
    src: Reg,
    dst: Reg,
    digest: Digest,
    manifest_digest: String,
    manifest_bytes: Vec<u8>,
    manifest: Value,
    map: Value,
}

impl Pushed {
    fn new() -> Pushed {
        let fake = Fake::start();
        let env = Env::new();
        let (src, digest) = source("base");
        push(&env, &src, "base", &fake);
        let (manifest_digest, manifest) = fake.manifest("base");
        let manifest_bytes = fake.manifest_bytes("base");
        let map = serde_json::from_slice(&fake.blob(&layer(&manifest, 0))).unwrap();
        Pushed {
            fake,
            env,
            src,
            dst: populated(),
            digest,
            manifest_digest,
            manifest_bytes,
            manifest,
            map,
        }
    }

    /// `base` and `sha256-<hex>`: the tags naming the snapshot.
    fn tags(&self) -> [String; 2] {
        ["base".into(), format!("sha256-{}", self.digest.hex())]
    }

    /// Point the tags at `manifest` (stored under its own digest).
    fn retag(&self, manifest: &[u8]) {
        let [a, b] = self.tags();
        self.fake.put_manifest_bytes(manifest, None, &[&a, &b]);
    }

    /// Store `map` (the chunk map after `edit_map`) as a blob, then point
    /// the tags at the original manifest naming it, after `edit_manifest`.
    fn rewrite(&self, edit_map: impl FnOnce(&mut Value), edit_manifest: impl FnOnce(&mut Value)) {
        let mut map = self.map.clone();
        edit_map(&mut map);
        let bytes = serde_json::to_vec(&map).unwrap();
        let mut manifest = self.manifest.clone();
        manifest["layers"][0]["digest"] = self.fake.put_blob(&bytes).into();
        manifest["layers"][0]["size"] = bytes.len().into();
        edit_manifest(&mut manifest);
        self.retag(manifest.to_string().as_bytes());
    }

    /// Pull `base` and assert the refusal (see [`refused`]).
    #[track_caller]
    fn refused(&self, code: i32, texts: &[&str]) {
        refused(&self.env, &self.dst, &self.fake.at("base"), code, texts);
    }

    /// Pull `base` and assert it works.
    #[track_caller]
    fn pulls(&self) -> Value {
        let run = self.env.run(
            &self.dst,
            &["pull", &self.fake.at("base"), "--insecure", "--json"],
            b"",
        );
        let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
        assert_eq!(report["head"], self.digest.to_string());
        assert!(open_pulls(&self.dst).is_empty(), "a pull was left open");
        self.dst.run(&["verify", "--content"]).ok();
        report
    }

    /// The upper's first chunk: its index in `chunks`, digest, pack digest,
    /// and its frame's offset and length in the pack.
    fn first_chunk(&self) -> (usize, String, String, usize, usize) {
        let index = self.map["files"][0]["extents"][0][1].as_u64().unwrap() as usize;
        let c = &self.map["chunks"][index];
        let pack = self.map["packs"][c[1].as_u64().unwrap() as usize]
            .as_str()
            .unwrap()
            .to_string();
        (
            index,
            c[0].as_str().unwrap().to_string(),
            pack,
            c[2].as_u64().unwrap() as usize,
            c[3].as_u64().unwrap() as usize,
        )
    }

    /// Serve `frame` as the upper's first chunk: the only frame of a new
    /// pack, which the chunk map names and the manifest lists.
    fn swap_first_chunk_frame(&self, frame: &[u8]) {
        let digest = self.fake.put_blob(frame);
        let (index, ..) = self.first_chunk();
        let len = frame.len();
        let packs = self.map["packs"].as_array().unwrap().len();
        let d = digest.clone();
        self.rewrite(
            |map| {
                map["packs"].as_array_mut().unwrap().push(d.into());
                map["chunks"][index][1] = packs.into();
                map["chunks"][index][2] = 0.into();
                map["chunks"][index][3] = len.into();
            },
            |manifest| {
                let layers = manifest["layers"].as_array_mut().unwrap();
                layers.push(json!({"mediaType": PACK, "digest": digest, "size": len}));
            },
        );
    }
}

/// A zstd stream of exactly `len` bytes that decompresses to `data`: its
/// frame, then a skippable frame as padding.
fn frame_of_len(data: &[u8], len: usize) -> Vec<u8> {
    let mut out = zstd::bulk::compress(data, 3).unwrap();
    let pad = len - out.len() - 8;
    out.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    out.extend_from_slice(&(pad as u32).to_le_bytes());
    out.resize(len, 0);
    out
}

#[test]
fn honest_fake_round_trip() {
    let p = Pushed::new();
    let report = p.pulls();
    let chunks = p.map["chunks"].as_array().unwrap().len() as u64;
    assert_eq!(report["chunks_downloaded"].as_u64(), Some(chunks));
    p.src.run(&["verify", "--content"]).ok();

    // A registry that ignores Range and sends whole packs is read through:
    // into a registry without any of the chunks (one range, the whole
    // pack), and into one that holds the upper's last region (the ranges
    // then start at the pack's first byte and end before its last).
    p.fake.config(json!({"ignore_range": true}));
    let dst = populated();
    let partly = populated();
    let mut spec = sample_spec(&partly, "tail");
    spec.data = vec![(3 << 20, mixed_bytes(2, 300_000))];
    add(&partly, "tail", &spec);
    for (dst, local) in [(&dst, 0), (&partly, 3)] {
        let run = p.env.run(
            dst,
            &["pull", &p.fake.at("base"), "--insecure", "--json"],
            b"",
        );
        let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
        assert_eq!(report["chunks_local"], local, "{report}");
        assert_eq!(
            report["chunks_downloaded"].as_u64(),
            Some(chunks - local),
            "{report}"
        );
        dst.run(&["verify", "--content"]).ok();
    }
}

#[test]
fn wrong_digests_are_refused_with_5() {
    let p = Pushed::new();
    let (fake, manifest) = (&p.fake, &p.manifest);

    // The chunk map, the config: fetched whole, bytes that are not their digest.
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    for blob in [layer(manifest, 0), config] {
        fake.corrupt_blob(&blob);
        p.refused(5, &[&blob, "digest"]);
        fake.corrupt_blob(&blob);
    }

    // A pack, read by range so its digest cannot be checked, whose first
    // chunk's frame is a good zstd stream of the same length but of other
    // bytes: each frame is checked against its chunk.
    let (_, chunk, pack, offset, len) = p.first_chunk();
    let original = fake.blob(&pack);
    let mut forged = original.clone();
    forged[offset..offset + len].copy_from_slice(&frame_of_len(&vec![7u8; 128 << 10], len));
    fake.put_blob_as(&forged, &pack);
    p.refused(5, &[&chunk, &pack]);
    fake.put_blob_as(&original, &pack);

    // A new pack whose frame is of other bytes than the chunk the map names.
    p.swap_first_chunk_frame(&zstd::bulk::compress(&vec![7u8; 128 << 10], 3).unwrap());
    p.refused(5, &[&chunk]);
    p.retag(&p.manifest_bytes);

    // A manifest asked for by digest whose bytes are another's; by tag,
    // one whose Docker-Content-Digest is not its bytes'.
    let mut other = manifest.clone();
    other["annotations"]["org.opencontainers.image.title"] = "evil".into();
    let other = other.to_string();
    let [a, b] = p.tags();
    fake.put_manifest_bytes(other.as_bytes(), Some(&p.manifest_digest), &[&a, &b]);
    refused(
        &p.env,
        &p.dst,
        &fake.at_digest(&p.manifest_digest),
        5,
        &[&format!("{REPO}@{}", p.manifest_digest)],
    );
    p.refused(5, &[&p.manifest_digest]);

    // Everything restored: the same pull works.
    fake.put_manifest_bytes(&p.manifest_bytes, None, &[&a, &b]);
    p.pulls();
}

#[test]
fn parent_tag_naming_another_snapshot_is_refused_with_5() {
    let fake = Fake::start();
    let env = Env::new();
    let (src, base) = source("base");
    let stray = add(&src, "stray", &sample_spec(&src, "stray"));
    let mut spec = sample_spec(&src, "child").parent(base);
    spec.data = vec![(0, mixed_bytes(1, 200_000)), (5 << 20, vec![9; 4096])];
    add(&src, "child", &spec);
    push(&env, &src, "stray", &fake);
    env.run(
        &src,
        &[
            "push",
            "child",
            &fake.at("child"),
            "--insecure",
            "--with-parents",
        ],
        b"",
    )
    .ok();
    let (stray_manifest, _) = fake.manifest("stray");
    let stray_bytes = fake.manifest_bytes(&stray_manifest);
    let base_tag = format!("sha256-{}", base.hex());
    let base_bytes = fake.manifest_bytes(&base_tag);
    fake.put_manifest_bytes(&stray_bytes, None, &[&base_tag]);
    let dst = populated();
    refused(
        &env,
        &dst,
        &fake.at("child"),
        5,
        &[&base_tag, &stray.to_string()],
    );
    // The same tag pulled itself: it names a snapshot by its identity.
    refused(
        &env,
        &dst,
        &fake.at(&base_tag),
        5,
        &[&base_tag, &stray.to_string()],
    );
    fake.put_manifest_bytes(&base_bytes, None, &[&base_tag]);
    env.run(&dst, &["pull", &fake.at("child"), "--insecure"], b"")
        .ok();
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn a_child_push_refuses_a_lying_parent_map() {
    // The parent was pushed from another machine; this one pushes a child
    // and learns from the parent's chunk map there which chunks the
    // repository holds. A lying map is refused before anything is sent.
    let p = Pushed::new();
    let (other, base) = source("base");
    assert_eq!(base, p.digest);
    let mut spec = sample_spec(&other, "child").parent(base);
    spec.data = vec![(0, mixed_bytes(1, 200_000)), (5 << 20, vec![9; 4096])];
    add(&other, "child", &spec);
    let huge = 1u64 << 62;
    p.rewrite(|m| m["chunk_size"] = huge.into(), |_| {});
    let target = p.fake.at("child");
    let before = (other.tree(), index(&other));
    let run = p
        .env
        .run(&other, &["push", "child", &target, "--insecure"], b"");
    failed(
        &run,
        6,
        &["chunk map", &base.to_string(), &huge.to_string()],
    );
    assert_eq!((other.tree(), index(&other)), before, "registry changed");
    let tags = p.fake.control(json!({"op": "tags", "repo": REPO}));
    assert!(tags["tags"].get("child").is_none(), "{tags}");

    // The honest map: the shared chunks are not sent again.
    p.retag(&p.manifest_bytes);
    let report: Value = serde_json::from_str(
        &p.env
            .run(
                &other,
                &["push", "child", &target, "--insecure", "--json"],
                b"",
            )
            .ok()
            .stdout,
    )
    .unwrap();
    assert!(report["chunks_present"].as_u64().unwrap() >= 2, "{report}");
    other.run(&["verify", "--content"]).ok();
}

#[test]
fn lying_deltas_are_refused() {
    // A child whose first chunk differs from its parent's by a few bytes
    // travels as a zstd delta against the parent's chunk.
    let fake = Fake::start();
    let env = Env::new();
    let (src, base) = source("base");
    let mut first = mixed_bytes(1, 200_000);
    first[1000..1016].copy_from_slice(b"a changed block.");
    let mut spec = sample_spec(&src, "child").parent(base);
    spec.data = vec![
        (0, first),
        (1 << 20, vec![0xab; 64 * 1024]),
        (3 << 20, mixed_bytes(2, 300_000)),
    ];
    let child = add(&src, "child", &spec);
    env.run(
        &src,
        &[
            "push",
            "child",
            &fake.at("child"),
            "--insecure",
            "--with-parents",
        ],
        b"",
    )
    .ok();
    let (_, manifest) = fake.manifest("child");
    let original = fake.manifest_bytes("child");
    let map: Value = serde_json::from_slice(&fake.blob(&layer(&manifest, 0))).unwrap();
    let deltas = map["deltas"].as_array().cloned().unwrap_or_default();
    assert!(
        !deltas.is_empty(),
        "the changed chunk is not a delta: {map}"
    );
    let (delta, delta_base) = (
        deltas[0][0].as_u64().unwrap(),
        deltas[0][1].as_u64().unwrap(),
    );
    let chunks = map["chunks"].as_array().unwrap().len() as u64;
    let plain = (0..chunks)
        .find(|&i| i != delta && i != delta_base)
        .unwrap();
    let tags = ["child".to_string(), format!("sha256-{}", child.hex())];
    let serve = |edit: &dyn Fn(&mut Value)| {
        let mut m = map.clone();
        edit(&mut m);
        let bytes = serde_json::to_vec(&m).unwrap();
        let mut man = manifest.clone();
        man["layers"][0]["digest"] = fake.put_blob(&bytes).into();
        man["layers"][0]["size"] = bytes.len().into();
        fake.put_manifest_bytes(man.to_string().as_bytes(), None, &[&tags[0], &tags[1]]);
    };
    let dst = populated();
    let target = fake.at("child");
    let delta_chunk = map["chunks"][delta as usize][0]
        .as_str()
        .unwrap()
        .to_string();

    // Decoded against another chunk than its base: not the chunk (5).
    serve(&|m| m["deltas"][0][1] = plain.into());
    refused(&env, &dst, &target, 5, &[&delta_chunk]);
    // A base out of range, a delta of a delta, a chunk given two bases (6).
    serve(&|m| m["deltas"][0][1] = u32::MAX.into());
    refused(&env, &dst, &target, 6, &["names no pair of chunks"]);
    serve(&|m| {
        m["deltas"]
            .as_array_mut()
            .unwrap()
            .push(json!([delta_base, plain]))
    });
    refused(&env, &dst, &target, 6, &["itself a delta"]);
    serve(&|m| {
        m["deltas"]
            .as_array_mut()
            .unwrap()
            .push(json!([delta, plain]))
    });
    refused(&env, &dst, &target, 6, &["two bases"]);

    fake.put_manifest_bytes(&original, None, &[&tags[0], &tags[1]]);
    let run = env.run(&dst, &["pull", &target, "--insecure", "--json"], b"");
    let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
    assert_eq!(report["head"], child.to_string());
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn foreign_manifests_and_configs_are_refused_with_6() {
    let p = Pushed::new();
    // An ordinary container image's manifest: no artifactType, an image config.
    p.rewrite(
        |_| {},
        |m| {
            m.as_object_mut().unwrap().remove("artifactType");
        },
    );
    p.refused(6, &["artifactType", "not a microsandbox snapshot"]);
    p.rewrite(
        |_| {},
        |m| m["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into(),
    );
    p.refused(
        6,
        &[
            "application/vnd.oci.image.config.v1+json",
            "not a snapshot manifest",
        ],
    );
    p.rewrite(
        |_| {},
        |m| m["layers"][1]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into(),
    );
    p.refused(6, &["tar+gzip", "not a pack"]);

    // A multi-platform image index under the tag, whatever Accept said.
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": p.manifest_digest, "size": p.manifest_bytes.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    });
    p.retag(index.to_string().as_bytes());
    p.refused(6, &["not an OCI manifest"]);
}

#[test]
fn hostile_image_caches_are_refused() {
    let fake = Fake::start();
    let env = Env::new();
    let src = Reg::new();
    let cache = src.path("cache");
    let image = make_image_cache(&cache, "python:3.12", 7, &[16384, 8192]);
    let dir = src.path("src/base");
    make_snapshot(&dir, &SnapSpec::new(&image).label("name", "base"));
    src.run(&[
        "add",
        dir.to_str().unwrap(),
        "--name",
        "base",
        "--cache-dir",
        cache.to_str().unwrap(),
    ])
    .ok();
    let target = fake.at("base");
    env.run(
        &src,
        &["push", "base", &target, "--insecure", "--with-image"],
        b"",
    )
    .ok();
    let tag = format!("image-sha256-{}", image.manifest_digest.hex());
    let (_, manifest) = fake.manifest(&tag);
    let original = fake.manifest_bytes(&tag);
    let dst = populated();
    let serve = |edit: &dyn Fn(&mut Value)| {
        let mut m = manifest.clone();
        edit(&mut m);
        fake.put_manifest_bytes(m.to_string().as_bytes(), None, &[&tag]);
    };
    let huge = (1u64 << 62).to_string();
    let title = "org.opencontainers.image.title";

    serve(&|m| m["layers"][0]["annotations"][title] = "../../../evil".into());
    refused(
        &env,
        &dst,
        &target,
        6,
        &["../../../evil", "not named as a cache file"],
    );
    serve(&|m| m["layers"][0]["size"] = (1u64 << 62).into());
    refused(&env, &dst, &target, 6, &[&huge]);
    serve(&|m| m["artifactType"] = "application/vnd.microsandbox.snapshot.v1".into());
    refused(
        &env,
        &dst,
        &target,
        6,
        &[&format!("{REPO}:{tag}"), "not a microsandbox image cache"],
    );

    // A cache file whose bytes are not its digest.
    fake.put_manifest_bytes(&original, None, &[&tag]);
    let blob = layer(&manifest, 0);
    fake.corrupt_blob(&blob);
    refused(&env, &dst, &target, 5, &[&blob]);
    fake.corrupt_blob(&blob);

    let run = env.run(&dst, &["pull", &target, "--insecure", "--json"], b"");
    let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
    let files = manifest["layers"].as_array().unwrap().len();
    assert_eq!(report["image_files_installed"], files, "{report}");
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn hostile_names_fall_back_to_the_digest() {
    // The name a snapshot was pushed under is only a suggestion: a path, a
    // terminal escape, or the name of another snapshot here is not taken.
    for title in ["../../../etc/evil", "red\u{1b}[31m", "other"] {
        let p = Pushed::new();
        p.rewrite(
            |_| {},
            |m| m["annotations"]["org.opencontainers.image.title"] = title.into(),
        );
        let report = p.pulls();
        assert_eq!(report["name"], p.digest.archive_prefix(), "{title:?}");
        let names: Vec<Value> = p
            .dst
            .json(&["sql", "SELECT name FROM snapshots ORDER BY name"]);
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().any(|n| n["name"] == "other"), "{names:?}");
    }
}

#[test]
fn non_canonical_config_is_refused_with_6() {
    let p = Pushed::new();
    let config = p
        .fake
        .blob(p.manifest["config"]["digest"].as_str().unwrap());
    let parsed: Value = serde_json::from_slice(&config).unwrap();
    let pretty = serde_json::to_vec_pretty(&parsed).unwrap();
    assert_ne!(pretty, config);
    let digest = p.fake.put_blob(&pretty);
    let mut manifest = p.manifest.clone();
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = pretty.len().into();
    p.retag(manifest.to_string().as_bytes());
    p.refused(6, &["canonical"]);
}

#[test]
fn lying_chunk_maps_are_refused_with_6() {
    let p = Pushed::new();
    let huge = 1u64 << 62;
    assert_eq!(p.map["files"][0]["path"], "upper.ext4");

    p.rewrite(|m| m["files"][0]["size"] = huge.into(), |_| {});
    p.refused(6, &["upper.ext4", &huge.to_string()]);

    p.rewrite(
        |m| m["files"][0]["extents"].as_array_mut().unwrap().reverse(),
        |_| {},
    );
    p.refused(6, &["out of order"]);

    p.rewrite(|m| m["files"][0]["extents"][0][0] = huge.into(), |_| {});
    p.refused(6, &[&huge.to_string()]);

    p.rewrite(|m| m["files"][0]["extents"][0][1] = huge.into(), |_| {});
    p.refused(6, &["chunk map"]);

    p.rewrite(|m| m["files"][0]["extents"][0][1] = u32::MAX.into(), |_| {});
    p.refused(6, &["out of range"]);

    p.rewrite(|m| m["chunk_size"] = huge.into(), |_| {});
    p.refused(6, &["chunk size"]);

    // Frames: a pack index, an offset, a length out of bounds.
    p.rewrite(|m| m["chunks"][0][1] = u32::MAX.into(), |_| {});
    p.refused(6, &["pack index", "out of range"]);
    p.rewrite(|m| m["chunks"][0][2] = huge.into(), |_| {});
    p.refused(6, &[&huge.to_string(), "runs past its pack"]);
    p.rewrite(|m| m["chunks"][0][3] = huge.into(), |_| {});
    p.refused(6, &[&huge.to_string(), "cannot hold a chunk"]);
    let stranger = Digest::of(b"not a layer").to_string();
    p.rewrite(|m| m["packs"][0] = stranger.clone().into(), |_| {});
    p.refused(6, &[&stranger, "not a layer"]);

    // The manifest's descriptors claiming 2^62 bytes: the chunk map, a
    // pack, the config.
    p.rewrite(|_| {}, |m| m["layers"][0]["size"] = huge.into());
    p.refused(6, &[&huge.to_string(), "chunk map"]);
    p.rewrite(|_| {}, |m| m["layers"][1]["size"] = huge.into());
    p.refused(6, &[&huge.to_string(), "pack"]);
    p.rewrite(|_| {}, |m| m["config"]["size"] = huge.into());
    p.refused(6, &[&huge.to_string()]);

    // Every frame good, but a data chunk left out: the upper assembled
    // from the map is not the one its manifest's integrity names.
    p.rewrite(
        |m| {
            m["files"][0]["extents"].as_array_mut().unwrap().pop();
        },
        |_| {},
    );
    p.refused(5, &["upper.ext4"]);

    // A frame that decompresses to more than a chunk (a zstd bomb).
    p.swap_first_chunk_frame(&zstd::bulk::compress(&vec![1u8; 4 << 20], 3).unwrap());
    p.refused(6, &["decompresses to more than the chunk's 131072 bytes"]);

    // A range answered with more than was asked for.
    p.retag(&p.manifest_bytes);
    p.fake.config(json!({"range_overflow": true}));
    p.refused(6, &["more than the range"]);
    p.fake.config(json!({"range_overflow": false}));

    // A range answered from one byte on (honestly labelled): refused by
    // its Content-Range, before a frame is decoded from the wrong bytes.
    let pack = layer(&p.manifest, 1);
    p.fake
        .config(json!({"range_shift": true, "only_blobs": [pack]}));
    p.refused(6, &[&pack, "bytes 1-", "not the range asked for"]);
    p.fake
        .config(json!({"range_shift": false, "only_blobs": null}));

    // A snapshot that is consistent throughout but claims a 2^62-byte
    // upper: its config, chunk map and manifest all agree.
    let config = p
        .fake
        .blob(p.manifest["config"]["digest"].as_str().unwrap());
    let mut parsed: Value = serde_json::from_slice(&config).unwrap();
    parsed["upper"]["size_bytes"] = huge.into();
    let config = serde_json::to_vec(&parsed).unwrap();
    let snapshot = p.fake.put_blob(&config);
    let config_len = config.len();
    p.rewrite(
        |m| {
            m["snapshot"] = snapshot.clone().into();
            m["files"][0]["size"] = huge.into();
        },
        |m| {
            m["config"]["digest"] = snapshot.clone().into();
            m["config"]["size"] = config_len.into();
        },
    );
    p.refused(6, &["upper.ext4", &huge.to_string(), "limit"]);

    p.retag(&p.manifest_bytes);
    p.pulls();
}

#[test]
fn endless_manifests_and_blobs_are_refused_early() {
    let p = Pushed::new();
    // "Endless": 1 GiB. A refusing client has read at most its bound; the
    // rest of what the fake managed to send sits in kernel buffers (the
    // receiver's autotunes up to tcp_rmem's maximum, 32 MiB here).
    let total: u64 = 1 << 30;
    let slack: u64 = 60 << 20;
    let bound = msb_registry::remote::format::MAX_OCI_MANIFEST_BYTES;
    // The fake logs a stream once its client hangs up, which a loaded
    // machine may let it notice a moment after the pull has exited.
    let streamed = || -> Vec<u64> {
        for _ in 0..200 {
            let s: Vec<u64> = p
                .fake
                .log()
                .iter()
                .filter_map(|e| e["streamed"].as_u64())
                .collect();
            if !s.is_empty() {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Vec::new()
    };
    for content_length in [true, false] {
        let stream = json!({"bytes": total, "content_length": content_length});
        p.fake.config(json!({"stream_manifests": stream}));
        p.fake.control(json!({"op": "reset_log"}));
        p.refused(6, &["manifest", &bound.to_string()]);
        let s = streamed();
        assert_eq!(s.len(), 1, "one manifest streamed: {s:?}");
        assert!(
            s[0] < bound + slack,
            "{s:?} bytes sent to a refusing client"
        );

        // The chunk map's blob runs on past the size its descriptor gives.
        let map = layer(&p.manifest, 0);
        p.fake
            .config(json!({"stream_manifests": null, "stream_blobs": stream, "only_blobs": [map]}));
        p.fake.control(json!({"op": "reset_log"}));
        p.refused(6, &[&map]);
        let s = streamed();
        assert_eq!(s.len(), 1, "one blob streamed: {s:?}");
        assert!(s[0] < slack, "{s:?} bytes sent to a refusing client");
        p.fake
            .config(json!({"stream_blobs": null, "only_blobs": null}));
    }
    p.pulls();
}

#[test]
fn redirected_blobs_arrive_without_credentials() {
    // Bearer tokens, and basic credentials (the password itself); the
    // other listener on another port of the same address, and by another
    // host name.
    for (kind, host) in [("bearer", "127.0.0.1"), ("basic", "localhost")] {
        let fake = Fake::start();
        let env = Env::new();
        let (src, digest) = source("base");
        fake.config(json!({"auth": {"kind": kind, "username": USER, "password": PASSWORD}}));
        let target = fake.at("base");
        let with_password = ["--insecure", "--username", USER, "--password-stdin"];
        let stdin = format!("{PASSWORD}\n");
        let mut args = vec!["push", "base", &target];
        args.extend(with_password);
        env.run(&src, &args, stdin.as_bytes()).ok();

        fake.config(json!({"redirect_blobs": true, "redirect_host": host}));
        fake.control(json!({"op": "reset_log"}));
        let dst = populated();
        let mut args = vec!["pull", &target, "--json"];
        args.extend(with_password);
        let run = env.run(&dst, &args, stdin.as_bytes());
        let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
        assert_eq!(report["head"], digest.to_string());
        let log = fake.log();
        let redirected: Vec<&Value> = log.iter().filter(|e| e["listener"] == "other").collect();
        assert!(
            !redirected.is_empty(),
            "{kind}: no blob was fetched through the redirect"
        );
        for e in &redirected {
            assert_eq!(
                e["authorization"],
                Value::Null,
                "{kind}: credentials crossed to {host}:{}: {e}",
                "other port"
            );
        }
        let scheme = if kind == "basic" { "Basic " } else { "Bearer " };
        assert!(
            log.iter().any(|e| e["listener"] == "registry"
                && e["authorization"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(scheme))),
            "{kind}: the registry itself never saw credentials"
        );
        dst.run(&["verify", "--content"]).ok();
    }
}

#[test]
fn uploads_sent_to_another_host_carry_no_credentials() {
    // A registry may answer a new upload with a Location on another host
    // (its storage): the blob goes there, the credentials do not.
    for kind in ["bearer", "basic"] {
        let fake = Fake::start();
        let env = Env::new();
        let (src, digest) = source("base");
        fake.config(json!({
            "auth": {"kind": kind, "username": USER, "password": PASSWORD},
            "upload_elsewhere": true,
        }));
        let target = fake.at("base");
        let with_password = ["--insecure", "--username", USER, "--password-stdin"];
        let stdin = format!("{PASSWORD}\n");
        let mut args = vec!["push", "base", &target];
        args.extend(with_password);
        env.run(&src, &args, stdin.as_bytes()).ok();
        let log = fake.log();
        let elsewhere: Vec<&Value> = log.iter().filter(|e| e["listener"] == "other").collect();
        assert!(!elsewhere.is_empty(), "{kind}: no upload went elsewhere");
        for e in &elsewhere {
            assert_eq!(
                e["authorization"],
                Value::Null,
                "{kind}: credentials sent with an upload to another port: {e}"
            );
        }
        let dst = populated();
        let mut args = vec!["pull", &target, "--json"];
        args.extend(with_password);
        let run = env.run(&dst, &args, stdin.as_bytes());
        let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
        assert_eq!(report["head"], digest.to_string());
        dst.run(&["verify", "--content"]).ok();
    }
}

#[test]
fn transfers_in_flight_stay_within_jobs() {
    let fake = Fake::start();
    let env = Env::new();
    let src = Reg::new();
    // 128 chunks of data: four packs of 32.
    let mut spec = sample_spec(&src, "wide");
    spec.len = 20 << 20;
    spec.data = vec![(0, mixed_bytes(5, 16 << 20))];
    add(&src, "wide", &spec);
    fake.config(json!({"stall": 0.2}));
    let target = fake.at("wide");
    let pushed: Value = serde_json::from_str(
        &env.run(
            &src,
            &[
                "push",
                "wide",
                &target,
                "--insecure",
                "--jobs",
                "2",
                "--json",
            ],
            b"",
        )
        .ok()
        .stdout,
    )
    .unwrap();
    assert!(pushed["blobs_uploaded"].as_u64().unwrap() >= 4, "{pushed}");
    let dst = populated();
    let pulled: Value = serde_json::from_str(
        &env.run(
            &dst,
            &["pull", &target, "--insecure", "--jobs", "2", "--json"],
            b"",
        )
        .ok()
        .stdout,
    )
    .unwrap();
    assert_eq!(pulled["chunks_downloaded"], 128, "{pulled}");
    let seen = fake.control(json!({"op": "in_flight"}));
    let (uploads, gets) = (
        seen["uploads"].as_u64().unwrap(),
        seen["blob_gets"].as_u64().unwrap(),
    );
    // At most --jobs (how many more than one ran side by side is the
    // scheduler's business, not asserted).
    for (what, n) in [("uploads", uploads), ("range reads", gets)] {
        assert!((1..=2).contains(&n), "{n} {what} at once with --jobs 2");
    }
    dst.run(&["verify", "--content"]).ok();
}

/// A base64 encoder for docker's `auth` field.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= c.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Assert no output of `run` and no file under the registries' roots (the
/// index, its WAL, staging, snapshots) holds the password, alone or in a
/// basic `user:password` pair.
#[track_caller]
fn password_nowhere(run: &Run, regs: &[&Reg]) {
    let b64 = base64(format!("{USER}:{PASSWORD}").as_bytes());
    for needle in [PASSWORD, b64.as_str()] {
        assert!(!run.stdout.contains(needle) && !run.stderr.contains(needle));
    }
    let mut files = Vec::new();
    for reg in regs {
        files_under(&reg.root(), &mut files);
    }
    assert!(files.iter().any(|f| f.ends_with("registry.db")));
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        for needle in [PASSWORD.as_bytes(), b64.as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds the credentials",
                f.display()
            );
        }
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

/// Push then pull `base` through a fake that wants `kind` auth ("bearer"
/// or "basic"), with `--username`/`--password-stdin`, asserting both work
/// and leak nothing.
fn password_stdin_round_trip(kind: &str) {
    let env = Env::new();
    let fake = Fake::start();
    fake.config(json!({"auth": {"kind": kind, "username": USER, "password": PASSWORD}}));
    let (src, digest) = source("base");
    let target = fake.at("base");
    let stdin = format!("{PASSWORD}\n");
    let with_password = ["--insecure", "--username", USER, "--password-stdin"];
    let mut args = vec!["push", "base", &target];
    args.extend(with_password);
    let pushed = env.run(&src, &args, stdin.as_bytes()).ok();
    let dst = populated();
    let mut args = vec!["pull", &target, "--json"];
    args.extend(with_password);
    let pulled = env.run(&dst, &args, stdin.as_bytes()).ok();
    let report: Value = serde_json::from_str(&pulled.stdout).unwrap();
    assert_eq!(report["head"], digest.to_string());
    let log = fake.log();
    let (path, scheme) = match kind {
        "bearer" => ("/token", "Basic "),
        _ => ("/v2/", "Basic "),
    };
    assert!(
        log.iter()
            .any(|e| e["path"].as_str().unwrap().starts_with(path)
                && e["authorization"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(scheme))),
        "{kind}: the credentials never reached {path}"
    );
    password_nowhere(&pushed, &[&src, &dst]);
    password_nowhere(&pulled, &[&src, &dst]);
    dst.run(&["verify", "--content"]).ok();
    src.run(&["verify", "--content"]).ok();
}

#[test]
fn bearer_token_with_password_stdin() {
    password_stdin_round_trip("bearer");
}

#[test]
fn basic_auth_with_password_stdin() {
    password_stdin_round_trip("basic");
}

#[test]
fn bearer_token_with_docker_config_auths() {
    let env = Env::new();
    // The fake's port is only known once it runs: the config names it
    // inside bearer_round_trip's fake, so write it per port.
    let fake = Fake::start();
    fake.config(json!({"auth": {"kind": "bearer", "username": USER, "password": PASSWORD}}));
    env.write_config(&json!({"auths": {
        fake.host(): {"auth": base64(format!("{USER}:{PASSWORD}").as_bytes())}
    }}));
    round_trip_without_flags(&env, &fake);
}

#[test]
fn bearer_token_with_a_docker_config_identity_token() {
    // `docker login` to some registries stores an OAuth2 refresh token,
    // which the token service exchanges (POST) for an access token.
    let env = Env::new();
    let fake = Fake::start();
    fake.config(json!({"auth": {
        "kind": "bearer", "username": USER, "password": "unused-elsewhere",
        "identity_token": PASSWORD,
    }}));
    env.write_config(&json!({"auths": {fake.host(): {"identitytoken": PASSWORD}}}));
    round_trip_without_flags(&env, &fake);
    assert!(
        fake.log()
            .iter()
            .any(|e| e["method"] == "POST" && e["path"].as_str().unwrap().starts_with("/token")),
        "the identity token was never exchanged"
    );
}

#[test]
fn bearer_token_with_credential_helper() {
    let env = Env::new();
    let fake = Fake::start();
    fake.config(json!({"auth": {"kind": "bearer", "username": USER, "password": PASSWORD}}));
    std::fs::create_dir_all(env.bin()).unwrap();
    let helper = env.bin().join("docker-credential-msbtest");
    let asked = env.dir.path().join("asked");
    write_script(
        &helper,
        &format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" >> {}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}\\n' \"$server\"\n",
            asked.display()
        ),
    );
    env.write_config(&json!({"credHelpers": {fake.host(): "msbtest"}}));
    round_trip_without_flags(&env, &fake);
    let asked = std::fs::read_to_string(&asked).unwrap();
    assert!(
        !asked.is_empty() && asked.lines().all(|l| l == fake.host()),
        "helper asked for {asked:?}"
    );

    // The same helper as the store for every registry.
    let fake = Fake::start();
    fake.config(json!({"auth": {"kind": "bearer", "username": USER, "password": PASSWORD}}));
    env.write_config(&json!({"credsStore": "msbtest"}));
    round_trip_without_flags(&env, &fake);
}

/// Push and pull through `fake` with only the docker config of `env`.
fn round_trip_without_flags(env: &Env, fake: &Fake) {
    let (src, digest) = source("base");
    let target = fake.at("base");
    let pushed = env
        .run(&src, &["push", "base", &target, "--insecure"], b"")
        .ok();
    let dst = populated();
    let pulled = env
        .run(&dst, &["pull", &target, "--insecure", "--json"], b"")
        .ok();
    let report: Value = serde_json::from_str(&pulled.stdout).unwrap();
    assert_eq!(report["head"], digest.to_string());
    password_nowhere(&pushed, &[&src, &dst]);
    password_nowhere(&pulled, &[&src, &dst]);
    dst.run(&["verify", "--content"]).ok();
    src.run(&["verify", "--content"]).ok();
}

#[test]
fn refused_credentials_exit_9() {
    let fake = Fake::start();
    let env = Env::new();
    let (src, _) = source("base");
    push(&env, &src, "base", &fake);
    fake.config(json!({"auth": {"kind": "bearer", "username": USER, "password": PASSWORD}}));
    let dst = populated();
    let before = (dst.tree(), index(&dst));
    let target = fake.at("base");
    let with_password = ["--username", USER, "--password-stdin"];
    let pull = |extra: &[&str], stdin: &[u8]| {
        let mut args = vec!["pull", &target, "--insecure"];
        args.extend(extra);
        env.run(&dst, &args, stdin)
    };

    // A wrong password, from stdin and from the docker config.
    let wrong = pull(&with_password, b"not-the-password\n");
    failed(&wrong, 9, &[&fake.host(), "refused"]);
    assert!(!wrong.stderr.contains("not-the-password"));
    let auth = base64(format!("{USER}:not-the-password").as_bytes());
    env.write_config(&json!({"auths": {fake.host(): {"auth": auth}}}));
    let wrong = pull(&[], b"");
    failed(&wrong, 9, &[&fake.host(), "refused"]);
    assert!(!wrong.stderr.contains("not-the-password") && !wrong.stderr.contains(&auth));
    std::fs::remove_file(env.docker().join("config.json")).unwrap();

    // No credentials: the token service refuses, or hands out a token the
    // registry refuses; either way the error says what to give.
    failed(&pull(&[], b""), 9, &[&fake.host(), "--username"]);
    fake.config(json!({"anonymous_tokens": true}));
    failed(&pull(&[], b""), 9, &[&fake.host(), "--username"]);

    // A token service that answers with an endless body: bounded, exit 8.
    fake.config(json!({"stream_token": {"bytes": 100 << 20, "content_length": false}}));
    failed(
        &pull(&with_password, format!("{PASSWORD}\n").as_bytes()),
        8,
        &["token"],
    );
    fake.config(json!({"stream_token": null}));

    assert_eq!((dst.tree(), index(&dst)), before, "registry changed");
    assert!(open_pulls(&dst).is_empty(), "a pull was left open");
    dst.run(&["verify", "--content"]).ok();
    let pushed = env.run(
        &src,
        &[
            "push",
            "base",
            &fake.at("again"),
            "--insecure",
            "--username",
            USER,
            "--password-stdin",
        ],
        b"not-the-password\n",
    );
    failed(&pushed, 9, &[&fake.host()]);
    src.run(&["verify", "--content"]).ok();
}

#[test]
fn a_failing_credential_helper_exits_9_without_its_output() {
    let env = Env::new();
    let dst = populated();
    std::fs::create_dir_all(env.bin()).unwrap();
    // It reads the request, then prints the secret on stdout and fails, as
    // a broken helper may.
    write_script(
        &env.bin().join("docker-credential-msbfail"),
        &format!(
            "#!/bin/sh\nread server\necho '{{\"Secret\":\"{PASSWORD}\"}}'\necho 'helper broke: keychain locked' >&2\nexit 1\n"
        ),
    );
    let host = "127.0.0.1:9";
    let source = format!("{host}/{REPO}:base");
    for config in [
        json!({"credHelpers": {host: "msbfail"}}),
        json!({"credsStore": "msbfail"}),
    ] {
        env.write_config(&config);
        let run = env.run(&dst, &["pull", &source, "--insecure"], b"");
        failed(
            &run,
            9,
            &["docker-credential-msbfail failed", "keychain locked"],
        );
        assert!(
            !run.stderr.contains("docker-credential-docker-credential"),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains(PASSWORD), "{}", run.stderr);
    }
}

/// Write an executable script.
fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(path, perms).unwrap();
}

#[test]
fn a_failing_registry_exits_8_and_the_rerun_resumes() {
    let p = Pushed::new();
    let before = (p.dst.tree(), index(&p.dst));
    let pull = || {
        p.env
            .run(&p.dst, &["pull", &p.fake.at("base"), "--insecure"], b"")
    };
    let pack = layer(&p.manifest, 1);
    p.fake
        .config(json!({"blob_status": 500, "only_blobs": [pack]}));
    failed(&pull(), 8, &[&p.fake.host(), &pack, "500"]);

    // The pull's staging stays for a rerun; nothing else changed.
    let open = open_pulls(&p.dst);
    assert_eq!(open.len(), 1, "{open:?}");
    assert!(open[0].1.starts_with("pull "), "{open:?}");
    let staging = format!("staging/{}", open[0].0);
    let after = p.dst.tree();
    for (path, size) in &before.0 {
        assert_eq!(after.get(path), Some(size), "{path} changed");
    }
    for path in after.keys().filter(|k| !before.0.contains_key(*k)) {
        assert!(path.starts_with(&staging), "{path} is new");
    }
    assert_eq!(index(&p.dst), before.1);
    p.dst.run(&["verify", "--content"]).ok();

    // A connection cut in the middle of a blob: the same staging, adopted.
    p.fake
        .config(json!({"blob_status": null, "drop_blobs": true}));
    failed(&pull(), 8, &[&p.fake.host(), &pack]);
    assert_eq!(open_pulls(&p.dst), open);

    // The registry mended: the rerun takes what was written and fetches the rest.
    p.fake
        .config(json!({"drop_blobs": false, "only_blobs": null}));
    let report = p.pulls();
    let chunks = p.map["chunks"].as_array().unwrap().len() as u64;
    let got =
        report["chunks_downloaded"].as_u64().unwrap() + report["chunks_resumed"].as_u64().unwrap();
    assert_eq!(got, chunks, "{report}");
    assert!(
        !p.dst.tree().keys().any(|k| k.starts_with(&staging)),
        "staging left behind"
    );
}

#[test]
fn a_failed_push_tags_nothing_and_the_rerun_sends_the_rest() {
    let fake = Fake::start();
    let env = Env::new();
    let (src, digest) = source("base");
    let target = fake.at("base");
    let push = || {
        env.run(
            &src,
            &["push", "base", &target, "--insecure", "--json"],
            b"",
        )
    };
    let tags = || {
        let v = fake.control(json!({"op": "tags", "repo": REPO}));
        let mut t: Vec<String> = v["tags"].as_object().unwrap().keys().cloned().collect();
        t.sort();
        t
    };

    // Uploads refused, then the manifests: exit 8, and no tag names anything.
    fake.config(json!({"upload_status": 500}));
    failed(&push(), 8, &[&fake.host(), "500"]);
    assert_eq!(tags(), Vec::<String>::new());
    fake.config(json!({"upload_status": null, "manifest_status": 500}));
    failed(&push(), 8, &[&fake.host(), "manifest", "500"]);
    assert_eq!(tags(), Vec::<String>::new());

    // Mended: every blob landed last time, only the manifest and tags go now.
    fake.config(json!({"manifest_status": null}));
    let report: Value = serde_json::from_str(&push().ok().stdout).unwrap();
    assert_eq!(
        (&report["blobs_uploaded"], &report["bytes_uploaded"]),
        (&json!(0), &json!(0)),
        "{report}"
    );
    let expected = vec!["base".to_string(), format!("sha256-{}", digest.hex())];
    assert_eq!(tags(), expected);

    // The repository loses everything (its tags deleted, its garbage
    // collected) behind the index's back: the push learns it from the
    // registry's MANIFEST_BLOB_UNKNOWN, forgets, and sends it all again.
    fake.control(json!({"op": "wipe", "repo": REPO}));
    let report: Value = serde_json::from_str(&push().ok().stdout).unwrap();
    assert!(report["blobs_uploaded"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(tags(), expected);
    let dst = populated();
    env.run(&dst, &["pull", &target, "--insecure"], b"").ok();
    dst.run(&["verify", "--content"]).ok();
    src.run(&["verify", "--content"]).ok();
}

#[test]
fn gc_keeps_a_dead_pulls_staging_for_its_grace_period() {
    let p = Pushed::new();
    let pack = layer(&p.manifest, 1);
    p.fake
        .config(json!({"blob_status": 503, "only_blobs": [pack]}));
    let pull = || {
        p.env.run(
            &p.dst,
            &["pull", &p.fake.at("base"), "--insecure", "--json"],
            b"",
        )
    };
    failed(&pull(), 8, &[&pack, "503"]);
    let open = open_pulls(&p.dst);
    assert_eq!(open.len(), 1, "{open:?}");
    let staging = format!("staging/{}/", open[0].0);
    assert!(p.dst.tree().contains_key(&staging));

    // Young: kept. Past its grace: removed like a dead import's, and the
    // next pull starts afresh.
    p.dst.run(&["gc"]).ok();
    assert!(
        p.dst.tree().contains_key(&staging),
        "gc removed a young pull"
    );
    assert_eq!(open_pulls(&p.dst), open);
    p.dst.run(&["gc", "--grace", "0"]).ok();
    assert!(!p.dst.tree().contains_key(&staging), "gc kept a dead pull");
    assert!(open_pulls(&p.dst).is_empty());
    p.dst.run(&["verify", "--content"]).ok();
    p.fake
        .config(json!({"blob_status": null, "only_blobs": null}));
    let report = p.pulls();
    assert_eq!(report["chunks_resumed"], 0, "{report}");
}

#[test]
fn an_unreachable_registry_exits_8() {
    let env = Env::new();
    let dst = populated();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    refused(&env, &dst, &format!("{host}/{REPO}:base"), 8, &[&host]);
}
