//! The harness for `push` and `pull` against a fake OCI registry
//! (tests/fixtures/oci_server.py; docs/oci.md): the fake as
//! a child process steered over HTTP, an environment with its own docker
//! config, snapshots pushed honestly to rewrite, and the assertions every
//! refusal shares (exit code, one line, registry unchanged, verify clean).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use msb_registry::model::digest::Digest;
use msb_registry::sample::mixed_bytes;
use serde_json::{Value, json};

use crate::util::*;

/// The repository every test pushes to.
pub const REPO: &str = "team/snaps";
/// The user the fake's auth accepts.
pub const USER: &str = "msb-user";
/// Its password, searched for in every output and file to prove it leaks nowhere.
pub const PASSWORD: &str = "s3cret-Pa55w0rd-xyzzy";

/// The fake registry, a python3 process on two random ports of 127.0.0.1:
/// the registry itself and the listener its blob redirects point at.
pub struct Fake {
    child: Child,
    port: u16,
}

impl Fake {
    pub fn start() -> Fake {
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

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `HOST:PORT/team/snaps:TAG`.
    pub fn at(&self, tag: &str) -> String {
        format!("{}/{REPO}:{tag}", self.host())
    }

    /// `HOST:PORT/team/snaps@DIGEST`.
    pub fn at_digest(&self, digest: &str) -> String {
        format!("{}/{REPO}@{digest}", self.host())
    }

    /// One HTTP/1.1 request with `Connection: close`; status and body.
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
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

    pub fn control(&self, req: Value) -> Value {
        let (status, body) = self.http("POST", "/_control", req.to_string().as_bytes());
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "control {req}: {v}");
        v
    }

    pub fn config(&self, mut settings: Value) {
        settings["op"] = "config".into();
        self.control(settings);
    }

    /// Every request the fake has seen, in order.
    pub fn log(&self) -> Vec<Value> {
        let (_, body) = self.http("GET", "/_control/log", b"");
        serde_json::from_slice(&body).unwrap()
    }

    /// The stored manifest a tag or digest names: its digest and JSON.
    pub fn manifest(&self, reference: &str) -> (String, Value) {
        let v = self.control(json!({"op": "get_manifest", "repo": REPO, "reference": reference}));
        let bytes = hex::decode(v["data_hex"].as_str().unwrap()).unwrap();
        (
            v["digest"].as_str().unwrap().to_string(),
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    pub fn manifest_bytes(&self, reference: &str) -> Vec<u8> {
        let v = self.control(json!({"op": "get_manifest", "repo": REPO, "reference": reference}));
        hex::decode(v["data_hex"].as_str().unwrap()).unwrap()
    }

    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let v = self.control(json!({"op": "get_blob", "digest": digest}));
        hex::decode(v["data_hex"].as_str().unwrap()).unwrap()
    }

    /// Store `bytes` as a blob of the repository; returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> String {
        let v =
            self.control(json!({"op": "put_blob", "repo": REPO, "data_hex": hex::encode(bytes)}));
        v["digest"].as_str().unwrap().to_string()
    }

    /// Store `bytes` as the blob `digest` (not theirs) of the repository.
    pub fn put_blob_as(&self, bytes: &[u8], digest: &str) {
        self.control(json!({"op": "put_blob", "repo": REPO, "data_hex": hex::encode(bytes), "digest": digest}));
    }

    /// Store raw manifest bytes under `digest` (their own digest when
    /// `None`) and point `tags` at it; returns the digest used.
    pub fn put_manifest_bytes(&self, bytes: &[u8], digest: Option<&str>, tags: &[&str]) -> String {
        let mut req = json!({
            "op": "put_manifest", "repo": REPO, "data_hex": hex::encode(bytes),
            "media_type": "application/vnd.oci.image.manifest.v1+json", "tags": tags,
        });
        if let Some(d) = digest {
            req["digest"] = d.into();
        }
        self.control(req)["digest"].as_str().unwrap().to_string()
    }

    pub fn corrupt_blob(&self, digest: &str) {
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
pub fn source(name: &str) -> (Reg, Digest) {
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
pub fn sample_spec(reg: &Reg, name: &str) -> SnapSpec {
    let image = make_image_cache(&reg.path("src-cache"), "python:3.12", 7, &[16384]);
    SnapSpec::new(&image).label("name", name)
}

/// Write the snapshot `spec` and `add` it to `reg` as `name`; its digest.
pub fn add(reg: &Reg, name: &str, spec: &SnapSpec) -> Digest {
    let dir = reg.path(&format!("src/{name}"));
    let digest = make_snapshot(&dir, spec);
    reg.run(&["add", dir.to_str().unwrap(), "--name", name])
        .ok();
    digest
}

/// A registry that already holds an unrelated snapshot (no chunk in common
/// with [`source`]'s), so "unchanged" means something.
pub fn populated() -> Reg {
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("other-cache"), "alpine:3.20", 3, &[8192]);
    let mut spec = SnapSpec::new(&image).label("name", "other");
    spec.data = vec![(2 << 20, mixed_bytes(99, 50_000))];
    add(&reg, "other", &spec);
    reg
}

/// An empty DOCKER_CONFIG and HOME, so no credentials of the machine's
/// user take part.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(env.docker()).unwrap();
        env
    }

    pub fn docker(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    pub fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    pub fn write_config(&self, config: &Value) {
        std::fs::write(self.docker().join("config.json"), config.to_string()).unwrap();
    }

    /// Run the binary against `reg` in this environment, with `stdin`.
    pub fn run(&self, reg: &Reg, args: &[&str], stdin: &[u8]) -> Run {
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

/// stderr without the `--insecure` warning and the notices of retries.
pub fn error_lines(run: &Run) -> Vec<&str> {
    run.stderr
        .lines()
        .filter(|l| !l.starts_with("warning: --insecure: plain HTTP") && !is_retry(l))
        .collect()
}

/// Whether `line` is the notice of a retry.
pub fn is_retry(line: &str) -> bool {
    line.starts_with("warning: retry ")
}

/// Assert `run` failed with `code` and one line of error containing every
/// one of `texts`.
#[track_caller]
pub fn failed(run: &Run, code: i32, texts: &[&str]) {
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
pub fn push(env: &Env, reg: &Reg, name: &str, fake: &Fake) -> Value {
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
pub fn refused(env: &Env, dst: &Reg, source: &str, code: i32, texts: &[&str]) {
    let before = (dst.tree(), index(dst));
    let run = env.run(dst, &["pull", source, "--insecure"], b"");
    failed(&run, code, texts);
    assert_eq!((dst.tree(), index(dst)), before, "registry changed");
    assert!(open_pulls(dst).is_empty(), "a pull was left open");
    dst.run(&["verify", "--content"]).ok();
}

/// The index as text: snapshots, images, cache files, and what it knows of
/// remote repositories.
pub fn index(reg: &Reg) -> String {
    let remote: Vec<Value> = reg.json(&[
        "sql",
        "SELECT * FROM remote_blobs UNION ALL SELECT registry, repository, chunk, pack, offset FROM remote_chunks",
    ]);
    format!("{}{remote:?}", reg.dump())
}

/// Pulls whose staging is kept for a rerun: (id, source).
pub fn open_pulls(reg: &Reg) -> Vec<(String, String)> {
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
pub fn layer(manifest: &Value, i: usize) -> String {
    manifest["layers"][i]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The OCI media type of a pack of chunk frames.
pub const PACK: &str = "application/vnd.microsandbox.snapshot.pack.v1+zstd";

/// One snapshot (`base`) pushed honestly to a fake, its manifest and chunk
/// map as pushed, and a populated registry to pull it into.
pub struct Pushed {
    pub fake: Fake,
    pub env: Env,
    pub src: Reg,
    pub dst: Reg,
    pub digest: Digest,
    pub manifest_digest: String,
    pub manifest_bytes: Vec<u8>,
    pub manifest: Value,
    pub map: Value,
}

impl Pushed {
    pub fn new() -> Pushed {
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
    pub fn tags(&self) -> [String; 2] {
        ["base".into(), format!("sha256-{}", self.digest.hex())]
    }

    /// Point the tags at `manifest` (stored under its own digest).
    pub fn retag(&self, manifest: &[u8]) {
        let [a, b] = self.tags();
        self.fake.put_manifest_bytes(manifest, None, &[&a, &b]);
    }

    /// Store `map` (the chunk map after `edit_map`) as a blob, then point
    /// the tags at the original manifest naming it, after `edit_manifest`.
    pub fn rewrite(
        &self,
        edit_map: impl FnOnce(&mut Value),
        edit_manifest: impl FnOnce(&mut Value),
    ) {
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
    pub fn refused(&self, code: i32, texts: &[&str]) {
        refused(&self.env, &self.dst, &self.fake.at("base"), code, texts);
    }

    /// Pull `base` and assert it works.
    #[track_caller]
    pub fn pulls(&self) -> Value {
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
    pub fn first_chunk(&self) -> (usize, String, String, usize, usize) {
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
    pub fn swap_first_chunk_frame(&self, frame: &[u8]) {
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
pub fn frame_of_len(data: &[u8], len: usize) -> Vec<u8> {
    let mut out = zstd::bulk::compress(data, 3).unwrap();
    let pad = len - out.len() - 8;
    out.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    out.extend_from_slice(&(pad as u32).to_le_bytes());
    out.resize(len, 0);
    out
}
