//! Realistic sample artifacts, written the way microsandbox writes them: a
//! snapshot directory with a sparse upper and its manifest, and an image
//! cache with metadata, fsmeta, vmdk and layers. Used by `demo`, the
//! benchmarks and the tests.

pub mod ext4;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::model::digest::{Digest, LogicalSink, PlainSha256, SparseSha256V1};
use crate::model::error::{IoContext, Result};
use crate::model::image::{CacheFile, CacheKind, ImageMetadata, LayerInfo};
use crate::model::manifest::{
    Format, INTEGRITY_SHA256, INTEGRITY_SPARSE_SHA256_V1, ImagePin, Integrity, Manifest, Upper,
};
use crate::store::files::{Piece, read_logical};

/// How to build a sample snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotSpec {
    /// Parent digest.
    pub parent: Option<Digest>,
    /// Apparent size of the upper.
    pub len: u64,
    /// Data written at offsets; everything else is a hole.
    pub data: Vec<(u64, Vec<u8>)>,
    /// Integrity algorithm to record, if any.
    pub integrity: Option<&'static str>,
    /// Image reference and manifest digest.
    pub image: (String, Digest),
    /// RFC 3339.
    pub created_at: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Originating sandbox.
    pub source_sandbox: Option<String>,
}

impl SnapshotSpec {
    /// An 8 MiB upper with a little data, pinned to `image` as `python:3.12`.
    pub fn new(image: &ImageMetadata) -> Self {
        SnapshotSpec {
            parent: None,
            len: 8 << 20,
            data: vec![
                (0, b"ext4 superblock".to_vec()),
                (1 << 20, vec![0xab; 64 * 1024]),
            ],
            integrity: Some(INTEGRITY_SPARSE_SHA256_V1),
            image: ("python:3.12".into(), image.manifest_digest),
            created_at: "2026-10-01T09:00:00Z".into(),
            labels: BTreeMap::new(),
            source_sandbox: Some("sample".into()),
        }
    }

    /// With a parent.
    pub fn parent(mut self, digest: Digest) -> Self {
        self.parent = Some(digest);
        self
    }

    /// With one more label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// Write the snapshot directory `dir` (manifest.json + sparse upper.ext4);
/// returns the snapshot's digest.
pub fn write_snapshot(dir: &Path, spec: &SnapshotSpec) -> Result<Digest> {
    std::fs::create_dir_all(dir).at("create directory", dir)?;
    let upper_path = dir.join("upper.ext4");
    let upper = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&upper_path)
        .at("create", &upper_path)?;
    upper.set_len(spec.len).at("truncate", &upper_path)?;
    for (offset, bytes) in &spec.data {
        upper
            .write_all_at(bytes, *offset)
            .at("write", &upper_path)?;
    }
    drop(upper);
    write_manifest(dir, spec)
}

/// Write `dir/manifest.json` for the upper already at `dir/upper.ext4` (its
/// apparent size, not `spec.len`, is recorded), computing the integrity
/// `spec` asks for; returns the snapshot's digest.
pub fn write_manifest(dir: &Path, spec: &SnapshotSpec) -> Result<Digest> {
    let upper_path = dir.join("upper.ext4");
    let upper = File::open(&upper_path).at("open", &upper_path)?;
    let len = upper.metadata().at("stat", &upper_path)?.len();
    let integrity = match spec.integrity {
        None => None,
        Some(algorithm) => {
            let digest = if algorithm == INTEGRITY_SHA256 {
                hash_upper(&upper, len, &upper_path, PlainSha256::default())?.finish()
            } else {
                hash_upper(&upper, len, &upper_path, SparseSha256V1::new(len))?.finish()
            };
            Some(Integrity {
                algorithm: algorithm.into(),
                digest: digest.to_string(),
            })
        }
    };
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
            size_bytes: len,
            integrity,
        },
        source_sandbox: spec.source_sandbox.clone(),
    };
    let manifest_path = dir.join("manifest.json");
    std::fs::write(&manifest_path, manifest.canonical_bytes()).at("write", &manifest_path)?;
    Ok(manifest.digest())
}

fn hash_upper<H: LogicalSink>(file: &File, len: u64, path: &Path, mut hasher: H) -> Result<H> {
    read_logical(file, len, path, |piece| {
        match piece {
            Piece::Data(d) => hasher.data(d),
            Piece::Zeros(n) => hasher.zeros(n),
        }
        Ok(())
    })?;
    Ok(hasher)
}

/// Deterministic bytes: half pseudo-random, half repetitive text, like a
/// real file system's mix of binaries and configuration.
pub fn mixed_bytes(seed: u64, len: usize) -> Vec<u8> {
    const BLOCK: usize = 64 * 1024;
    const TEXT: &[u8] = b"PATH=/usr/local/bin:/usr/bin LANG=C.UTF-8 python3 -m pip install ";
    let mut out = Vec::with_capacity(len + BLOCK);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for block in 0..len.div_ceil(BLOCK) {
        if block % 2 == 0 {
            for _ in 0..BLOCK / 8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.extend_from_slice(&x.to_le_bytes());
            }
        } else {
            out.extend(TEXT.iter().cycle().take(BLOCK));
        }
    }
    out.truncate(len);
    out
}

/// Write a microsandbox-style image cache under `cache_dir` for
/// `reference` with layers of the given sizes (multiples of 4096).
pub fn write_image_cache(
    cache_dir: &Path,
    reference: &str,
    seed: u8,
    layer_sizes: &[u64],
) -> Result<ImageMetadata> {
    let layers_dir = cache_dir.join(CacheKind::Layers.as_str());
    std::fs::create_dir_all(&layers_dir).at("create directory", &layers_dir)?;
    let mut layers = Vec::new();
    for (i, size) in layer_sizes.iter().enumerate() {
        let content = mixed_bytes(u64::from(seed) << 8 | i as u64, *size as usize);
        let diff_id = Digest::of(&content);
        let file = CacheFile {
            kind: CacheKind::Layers,
            key: diff_id,
        };
        let path = cache_dir.join(file.rel_path());
        std::fs::write(&path, &content).at("write", &path)?;
        layers.push(LayerInfo {
            digest: Digest::of(&[seed, i as u8, 1]),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            size_bytes: *size / 2,
            diff_id,
        });
    }
    write_image_metadata(cache_dir, reference, seed, layers)
}

/// Write metadata, fsmeta and vmdk for an image whose layer files are
/// already in `cache_dir`.
pub fn write_image_metadata(
    cache_dir: &Path,
    reference: &str,
    seed: u8,
    layers: Vec<LayerInfo>,
) -> Result<ImageMetadata> {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
    let blobs: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
    let raw_config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "seed": seed,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let raw_manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": {"digest": Digest::of(raw_config.as_bytes())},
        "layers": blobs,
    })
    .to_string();
    let meta = ImageMetadata {
        manifest_digest: Digest::of(raw_manifest.as_bytes()),
        config_digest: Digest::of(raw_config.as_bytes()),
        raw_manifest_json: raw_manifest,
        raw_config_json: raw_config,
        config: serde_json::Map::new(),
        layers,
    };
    for kind in CacheKind::ALL {
        let dir = cache_dir.join(kind.as_str());
        std::fs::create_dir_all(&dir).at("create directory", &dir)?;
    }
    let files = [
        (
            CacheFile::metadata_for_ref(reference),
            serde_json::to_vec(&meta).expect("metadata serializes"),
        ),
        (
            CacheFile {
                kind: CacheKind::Fsmeta,
                key: meta.manifest_digest,
            },
            vec![seed | 0x40; 8192],
        ),
        (
            CacheFile {
                kind: CacheKind::Vmdk,
                key: meta.manifest_digest,
            },
            format!("# Disk DescriptorFile seed {seed}\n").into_bytes(),
        ),
    ];
    for (file, bytes) in files {
        let path = cache_dir.join(file.rel_path());
        std::fs::write(&path, bytes).at("write", &path)?;
    }
    Ok(meta)
}
