//! The test harness: temporary registries, a command runner for the real
//! binary, and builders for snapshot directories and image caches.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};

use msb_registry::model::digest::Digest;
use msb_registry::model::image::{ImageMetadata, LayerInfo};
use msb_registry::sample;
use serde::de::DeserializeOwned;

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_msb-registry")
}

/// microsandbox-written archives, when `../shared/fixtures` is present.
pub fn fixtures() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    if dir.join("seed-save-single.tar").exists() {
        Some(dir)
    } else {
        eprintln!("skipping: ../shared/fixtures is absent (only a full checkout has it)");
        None
    }
}

/// The binary as a [`Command`] with `--root` set to `root` and the
/// environment that steers it (`MSB_REGISTRY_ROOT`, `MSB_FAILPOINT`) cleared.
pub fn command_at(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("--root").arg(root).args(args);
    cmd.env_remove("MSB_REGISTRY_ROOT")
        .env_remove("MSB_FAILPOINT");
    cmd
}

/// How a failpoint holds the binary.
#[derive(Debug, Clone, Copy)]
pub enum Hold {
    /// Sleeps until killed.
    Pause,
    /// Raises SIGSTOP; SIGCONT resumes it.
    Stop,
}

/// A run of the binary held at a failpoint, and the rest of its stderr.
pub struct Held {
    pub child: Child,
    pub stderr: BufReader<ChildStderr>,
}

/// The outcome of one run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Assert success and return self.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Assert exit `code` with stderr containing `text`.
    #[track_caller]
    pub fn fails(self, code: i32, text: &str) -> Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(text),
            "stderr {:?} lacks {:?}",
            self.stderr,
            text
        );
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "error is one line: {:?}",
            self.stderr
        );
        self
    }

    /// Decode stdout as JSON.
    #[track_caller]
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not the expected JSON ({e}): {}", self.stdout))
    }
}

/// A temporary registry root and a scratch directory.
pub struct Reg {
    pub dir: tempfile::TempDir,
}

impl Reg {
    pub fn new() -> Self {
        Reg {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A scratch path beside the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Run the binary with `--root` set to this registry.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// Export `head` with its parents and `args` (`--with-image`, `--dense`,
    /// …) to `file` in the scratch directory; the archive's path.
    pub fn export_chain(&self, head: &str, file: &str, args: &[&str]) -> PathBuf {
        let path = self.path(file);
        let mut all = vec!["export", head, "--with-parents"];
        all.extend(args);
        all.extend(["-o", path.to_str().unwrap()]);
        self.run(&all).ok();
        path
    }

    /// Run the binary with `--root` set to this registry and `env` added.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run::from(cmd.output().unwrap())
    }

    /// Run the binary with `--root` set to this registry and `input` on its
    /// stdin.
    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let (written, out) = std::thread::scope(|s| {
            let writer = s.spawn(move || stdin.write_all(input));
            let out = child.wait_with_output().unwrap();
            (writer.join().unwrap(), out)
        });
        // The binary may stop reading early (a refusal): a broken pipe then
        // is the expected end of the write, not a failure of the test.
        if let Err(e) = written {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
        Run::from(out)
    }

    /// Start `args` with the failpoint `point` (`name[@n]`) armed to hold
    /// the binary there, and return once its stderr says it is held.
    #[track_caller]
    pub fn held_at(&self, args: &[&str], point: &str, hold: Hold) -> Held {
        self.held_with(self.command(args), point, hold)
    }

    /// [`Reg::held_at`] for a command the caller built (extra environment).
    #[track_caller]
    pub fn held_with(&self, mut cmd: Command, point: &str, hold: Hold) -> Held {
        let args = cmd.get_args().map(|a| a.to_owned()).collect::<Vec<_>>();
        let name = point.split('@').next().unwrap();
        let (action, said) = match hold {
            Hold::Pause => ("pause", "paused"),
            Hold::Stop => ("stop", "stopped"),
        };
        let mut child = cmd
            .env("MSB_FAILPOINT", format!("{point}:{action}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.starts_with(&format!("failpoint {name}: {said}")) {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "{args:?} ended before {point}: {:?}",
                child.wait()
            );
        }
        if let Hold::Stop = hold {
            // The line comes just before the raise: wait until the process
            // is stopped, or a SIGCONT sent now would be lost before it.
            let stat = format!("/proc/{}/stat", child.id());
            while !std::fs::read_to_string(&stat)
                .unwrap()
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        Held { child, stderr }
    }

    /// The binary as a [`Command`] with `--root` set to this registry, for
    /// tests that need pipes, signals or a child they wait on themselves.
    pub fn command(&self, args: &[&str]) -> Command {
        command_at(&self.root(), args)
    }

    /// Run and decode `--json` output.
    #[track_caller]
    pub fn json<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut a = args.to_vec();
        a.push("--json");
        self.run(&a).ok().json()
    }

    /// A listing of every file under the root with its size, except the
    /// database files and lock files, to compare before and after.
    pub fn tree(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        walk(&self.root(), &self.root(), &mut out);
        out
    }

    /// The whole index as text, for before/after comparisons.
    pub fn dump(&self) -> String {
        let out = Command::new("sqlite3")
            .arg(self.root().join("registry.db"))
            .arg("SELECT * FROM snapshots; SELECT * FROM snapshot_files; SELECT * FROM images; SELECT * FROM image_layers; SELECT * FROM cache_files;")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let e = e.unwrap();
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel.starts_with("registry.db") || rel.ends_with(".lock") {
            continue;
        }
        let m = p.symlink_metadata().unwrap();
        if m.is_dir() {
            out.insert(format!("{rel}/"), 0);
            walk(root, &p, out);
        } else {
            out.insert(rel, m.len());
        }
    }
}

/// How to build a test snapshot: the library's own sample builder.
pub use msb_registry::sample::SnapshotSpec as SnapSpec;

/// Write a snapshot directory `dir` from `spec` with the library's sample
/// builder; returns its digest.
#[track_caller]
pub fn make_snapshot(dir: &Path, spec: &SnapSpec) -> Digest {
    sample::write_snapshot(dir, spec).unwrap()
}

/// The logical bytes of a spec's upper (tests use small uppers).
pub fn logical_bytes(spec: &SnapSpec) -> Vec<u8> {
    let mut v = vec![0u8; spec.len as usize];
    for (off, bytes) in &spec.data {
        v[*off as usize..*off as usize + bytes.len()].copy_from_slice(bytes);
    }
    v
}

/// Write a microsandbox-style image cache under `cache_dir` for `reference`
/// with layers of the given sizes (multiples of 4096); returns its metadata.
#[track_caller]
pub fn make_image_cache(
    cache_dir: &Path,
    reference: &str,
    seed: u8,
    layer_sizes: &[u64],
) -> ImageMetadata {
    sample::write_image_cache(cache_dir, reference, seed, layer_sizes).unwrap()
}

/// Write metadata (and fsmeta + vmdk) for an image with the given layers,
/// whose layer files must already be in `cache_dir`.
#[track_caller]
pub fn write_image_metadata(
    cache_dir: &Path,
    reference: &str,
    seed: u8,
    layers: Vec<LayerInfo>,
) -> ImageMetadata {
    sample::write_image_metadata(cache_dir, reference, seed, layers).unwrap()
}

/// Add a sample snapshot `name` (labelled with its name) pinned to `image`
/// under `reference`, taking the image's artifacts from `cache`.
pub fn add_pinned(reg: &Reg, name: &str, image: &ImageMetadata, reference: &str, cache: &Path) {
    let dir = reg.path(&format!("src/{name}"));
    let mut spec = SnapSpec::new(image).label("name", name);
    spec.image.0 = reference.into();
    make_snapshot(&dir, &spec);
    reg.run(&[
        "add",
        dir.to_str().unwrap(),
        "--name",
        name,
        "--cache-dir",
        cache.to_str().unwrap(),
    ])
    .ok();
}

/// A three-snapshot chain (base → deps → app) and its image cache, added to
/// `reg` under those names. Returns the digests root first, and the image.
pub fn chain_in_registry(reg: &Reg) -> (Vec<Digest>, ImageMetadata) {
    let cache = reg.path("src-cache");
    let image = make_image_cache(&cache, "python:3.12", 7, &[32768, 16384]);
    let mut digests = Vec::new();
    for (i, name) in ["base", "deps", "app"].iter().enumerate() {
        let mut spec = SnapSpec::new(&image).label("stage", name);
        spec.created_at = format!("2026-10-01T09:0{i}:00Z");
        spec.data
            .push(((i as u64 + 2) << 20, vec![i as u8 + 1; 8192]));
        if let Some(p) = digests.last() {
            spec = spec.parent(*p);
        }
        let dir = reg.path(&format!("src/{name}"));
        digests.push(make_snapshot(&dir, &spec));
        let mut args = vec!["add", dir.to_str().unwrap(), "--name", name];
        let cache_s = cache.to_str().unwrap().to_string();
        if i == 0 {
            args.extend(["--cache-dir", &cache_s]);
        }
        reg.run(&args).ok();
    }
    (digests, image)
}
