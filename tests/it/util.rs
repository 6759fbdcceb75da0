//! The test harness: temporary registries, a command runner for the real
//! binary, and builders for snapshot directories and image caches.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use msb_registry::digest::{Digest, LogicalSink, PlainSha256, SparseSha256V1};
use msb_registry::image::{CacheFile, CacheKind, ImageMetadata, LayerInfo};
use msb_registry::manifest::{Format, ImagePin, Integrity, Manifest, Upper};
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

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(bin());
        cmd.arg("--root").arg(self.root()).args(args);
        cmd.env_remove("MSB_REGISTRY_ROOT")
            .env_remove("MSB_FAILPOINT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run::from(cmd.output().unwrap())
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

/// How to build a test snapshot.
#[derive(Clone)]
pub struct SnapSpec {
    pub parent: Option<Digest>,
    /// Apparent size of the upper.
    pub len: u64,
    /// Data written at offsets; the rest is holes.
    pub data: Vec<(u64, Vec<u8>)>,
    /// `None`, `Some("sha256")` or `Some("msb-sparse-sha256-v1")`.
    pub integrity: Option<&'static str>,
    pub image: (String, Digest),
    pub created_at: String,
    pub labels: BTreeMap<String, String>,
}

impl SnapSpec {
    pub fn new(image: &ImageMetadata) -> Self {
        SnapSpec {
            parent: None,
            len: 8 << 20,
            data: vec![
                (0, b"ext4 superblock".to_vec()),
                (1 << 20, vec![0xab; 64 * 1024]),
            ],
            integrity: Some("msb-sparse-sha256-v1"),
            image: ("python:3.12".into(), image.manifest_digest),
            created_at: "2026-10-01T09:00:00Z".into(),
            labels: BTreeMap::new(),
        }
    }

    pub fn parent(mut self, d: Digest) -> Self {
        self.parent = Some(d);
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
}

/// Write a snapshot directory `dir` from `spec`; returns its digest.
pub fn make_snapshot(dir: &Path, spec: &SnapSpec) -> Digest {
    std::fs::create_dir_all(dir).unwrap();
    let upper = File::create(dir.join("upper.ext4")).unwrap();
    upper.set_len(spec.len).unwrap();
    for (off, bytes) in &spec.data {
        upper.write_all_at(bytes, *off).unwrap();
    }
    let integrity = spec.integrity.map(|alg| {
        let logical = logical_bytes(spec);
        let digest = match alg {
            "sha256" => {
                let mut h = PlainSha256::default();
                h.data(&logical);
                h.finish()
            }
            _ => {
                let mut h = SparseSha256V1::new(spec.len);
                h.data(&logical);
                h.finish()
            }
        };
        Integrity {
            algorithm: alg.into(),
            digest: digest.to_string(),
        }
    });
    let manifest = Manifest {
        schema: 1,
        format: Format::Raw,
        fstype: "ext4".into(),
        image: ImagePin {
            reference: spec.image.0.clone(),
            manifest_digest: spec.image.1,
        },
        parent: spec.parent,
        created_at: spec.created_at.clone(),
        labels: spec.labels.clone(),
        upper: Upper {
            file: "upper.ext4".into(),
            size_bytes: spec.len,
            integrity,
        },
        source_sandbox: Some("test".into()),
    };
    std::fs::write(dir.join("manifest.json"), manifest.canonical_bytes()).unwrap();
    manifest.digest()
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
pub fn make_image_cache(
    cache_dir: &Path,
    reference: &str,
    seed: u8,
    layer_sizes: &[u64],
) -> ImageMetadata {
    for k in CacheKind::ALL {
        std::fs::create_dir_all(cache_dir.join(k.as_str())).unwrap();
    }
    let mut layers = Vec::new();
    for (i, size) in layer_sizes.iter().enumerate() {
        let content: Vec<u8> = (0..*size)
            .map(|j| (j as u8) ^ seed ^ (i as u8 * 31) | 1)
            .collect();
        let diff_id = Digest::of(&content);
        let file = CacheFile {
            kind: CacheKind::Layers,
            key: diff_id,
        };
        std::fs::write(cache_dir.join(file.rel_path()), &content).unwrap();
        layers.push(LayerInfo {
            digest: Digest::of(&[seed, i as u8, 1]),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            size_bytes: *size / 2,
            diff_id,
        });
    }
    write_image_metadata(cache_dir, reference, seed, layers)
}

/// Write metadata (and fsmeta + vmdk) for an image with the given layers,
/// whose layer files must already be in `cache_dir`.
pub fn write_image_metadata(
    cache_dir: &Path,
    reference: &str,
    seed: u8,
    layers: Vec<LayerInfo>,
) -> ImageMetadata {
    let raw_config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":{}}}}}",
        serde_json::to_string(
            &layers
                .iter()
                .map(|l| l.diff_id.to_string())
                .collect::<Vec<_>>()
        )
        .unwrap()
    );
    let raw_manifest = format!(
        "{{\"schemaVersion\":2,\"config\":{{\"digest\":\"{}\"}},\"layers\":{}}}",
        Digest::of(raw_config.as_bytes()),
        serde_json::to_string(
            &layers
                .iter()
                .map(|l| l.digest.to_string())
                .collect::<Vec<_>>()
        )
        .unwrap()
    );
    let meta = ImageMetadata {
        manifest_digest: Digest::of(raw_manifest.as_bytes()),
        config_digest: Digest::of(raw_config.as_bytes()),
        raw_manifest_json: raw_manifest,
        raw_config_json: raw_config,
        config: serde_json::Map::new(),
        layers,
    };
    for k in CacheKind::ALL {
        std::fs::create_dir_all(cache_dir.join(k.as_str())).unwrap();
    }
    std::fs::write(
        cache_dir.join(CacheFile::metadata_for_ref(reference).rel_path()),
        serde_json::to_vec(&meta).unwrap(),
    )
    .unwrap();
    let fsmeta = CacheFile {
        kind: CacheKind::Fsmeta,
        key: meta.manifest_digest,
    };
    std::fs::write(cache_dir.join(fsmeta.rel_path()), vec![seed | 0x40; 8192]).unwrap();
    let vmdk = CacheFile {
        kind: CacheKind::Vmdk,
        key: meta.manifest_digest,
    };
    std::fs::write(
        cache_dir.join(vmdk.rel_path()),
        format!("# Disk DescriptorFile seed {seed}\n"),
    )
    .unwrap();
    meta
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
