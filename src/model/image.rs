//! Cached image artifacts: the metadata document, the four artifact kinds,
//! their file names, and Docker-style reference normalisation (DESIGN §1).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::digest::Digest;

/// The largest metadata document accepted; bigger ones are refused before buffering.
pub const MAX_METADATA_BYTES: u64 = 16 * 1024 * 1024;

/// EROFS artifacts are whole 4 KiB blocks.
pub const EROFS_ALIGN: u64 = 4096;

/// The kinds of file under `cache/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    /// Image metadata JSON, keyed by the normalized reference.
    Manifests,
    /// One EROFS per layer `diff_id`, shared between images.
    Layers,
    /// EROFS metadata image, keyed by image manifest digest.
    Fsmeta,
    /// VMDK descriptor, keyed by image manifest digest.
    Vmdk,
}

impl CacheKind {
    /// Every kind, in archive order.
    pub const ALL: [CacheKind; 4] = [
        CacheKind::Manifests,
        CacheKind::Layers,
        CacheKind::Fsmeta,
        CacheKind::Vmdk,
    ];

    /// Directory name under `cache/`, also the value stored in the index.
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheKind::Manifests => "manifests",
            CacheKind::Layers => "layers",
            CacheKind::Fsmeta => "fsmeta",
            CacheKind::Vmdk => "vmdk",
        }
    }

    /// The kind named by a directory under `cache/`.
    pub fn from_dir(name: &str) -> Option<Self> {
        CacheKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    fn extension(&self) -> &'static str {
        match self {
            CacheKind::Manifests => ".json",
            CacheKind::Layers | CacheKind::Fsmeta => ".erofs",
            CacheKind::Vmdk => ".vmdk",
        }
    }

    /// Whether files of this kind must be non-empty multiples of 4 KiB.
    pub fn is_erofs(&self) -> bool {
        matches!(self, CacheKind::Layers | CacheKind::Fsmeta)
    }
}

impl fmt::Display for CacheKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated cache file name: a kind and the digest it is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheFile {
    /// Which directory it lives in.
    pub kind: CacheKind,
    /// The digest in its name: ref hash, diff_id, or image manifest digest.
    pub key: Digest,
}

impl CacheFile {
    /// The metadata file of a reference (`manifests/<sha256 of normalized ref>.json`).
    pub fn metadata_for_ref(reference: &str) -> Self {
        CacheFile {
            kind: CacheKind::Manifests,
            key: Digest::of(normalize_ref(reference).as_bytes()),
        }
    }

    /// The file name inside its kind's directory.
    pub fn file_name(&self) -> String {
        match self.kind {
            CacheKind::Manifests => format!("{}.json", self.key.hex()),
            k => format!("sha256_{}{}", self.key.hex(), k.extension()),
        }
    }

    /// `<kind>/<file>`, the path under `cache/` and the name stored in the index.
    pub fn rel_path(&self) -> String {
        format!("{}/{}", self.kind, self.file_name())
    }

    /// Parse a file name found under `cache/<kind>/`; `None` for anything else.
    pub fn parse(kind: CacheKind, name: &str) -> Option<Self> {
        let stem = name.strip_suffix(kind.extension())?;
        let hex_digits = match kind {
            CacheKind::Manifests => stem,
            _ => stem.strip_prefix("sha256_")?,
        };
        let key = Digest::from_hex(hex_digits).ok()?;
        Some(CacheFile { kind, key })
    }

    /// Why a file of `len` bytes cannot be this artifact, if it cannot:
    /// EROFS images are non-empty whole multiples of 4 KiB.
    pub fn size_problem(&self, len: u64) -> Option<String> {
        (self.kind.is_erofs() && (len == 0 || !len.is_multiple_of(EROFS_ALIGN))).then(|| {
            format!("EROFS image of {len} bytes is not a non-empty multiple of {EROFS_ALIGN}")
        })
    }

    /// Parse `<kind>/<file>`.
    pub fn parse_rel(rel: &str) -> Option<Self> {
        let (kind, name) = rel.split_once('/')?;
        CacheFile::parse(CacheKind::from_dir(kind)?, name)
    }
}

/// One layer of an image, bottom to top.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// The compressed blob digest.
    pub digest: Digest,
    /// OCI media type of the blob.
    pub media_type: String,
    /// Compressed blob size.
    pub size_bytes: u64,
    /// Digest of the uncompressed layer; names the EROFS file.
    pub diff_id: Digest,
}

/// The cached image metadata document (`cache/manifests/<hash>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageMetadata {
    /// Digest of `raw_manifest_json`.
    pub manifest_digest: Digest,
    /// Digest of `raw_config_json`.
    pub config_digest: Digest,
    /// The image manifest exactly as the registry served it.
    pub raw_manifest_json: String,
    /// The image config exactly as the registry served it.
    pub raw_config_json: String,
    /// microsandbox's parsed config; kept opaque.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Layers, bottom to top.
    pub layers: Vec<LayerInfo>,
}

/// Why a metadata document is unusable.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// Not JSON of the expected shape.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// `raw_manifest_json` does not hash to `manifest_digest`.
    #[error("raw_manifest_json hashes to {found}, but manifest_digest is {declared}")]
    ManifestDigest {
        /// The digest field.
        declared: Digest,
        /// What the raw JSON hashes to.
        found: Digest,
    },
    /// `raw_config_json` does not hash to `config_digest`.
    #[error("raw_config_json hashes to {found}, but config_digest is {declared}")]
    ConfigDigest {
        /// The digest field.
        declared: Digest,
        /// What the raw JSON hashes to.
        found: Digest,
    },
    /// Larger than [`MAX_METADATA_BYTES`].
    #[error("metadata is {0} bytes; the limit is 16 MiB")]
    TooLarge(u64),
}

impl ImageMetadata {
    /// Parse a metadata document and check its two self-digests.
    pub fn parse(bytes: &[u8]) -> Result<Self, MetadataError> {
        if bytes.len() as u64 > MAX_METADATA_BYTES {
            return Err(MetadataError::TooLarge(bytes.len() as u64));
        }
        let meta: ImageMetadata = serde_json::from_slice(bytes)?;
        let found = Digest::of(meta.raw_manifest_json.as_bytes());
        if found != meta.manifest_digest {
            return Err(MetadataError::ManifestDigest {
                declared: meta.manifest_digest,
                found,
            });
        }
        let found = Digest::of(meta.raw_config_json.as_bytes());
        if found != meta.config_digest {
            return Err(MetadataError::ConfigDigest {
                declared: meta.config_digest,
                found,
            });
        }
        Ok(meta)
    }

    /// Every cache file this image needs besides the metadata itself.
    pub fn artifact_files(&self) -> Vec<CacheFile> {
        Self::artifact_names(self.manifest_digest, &self.layers)
    }

    /// fsmeta, vmdk, and one layer per distinct `diff_id`, for an image
    /// pinned at `manifest_digest` with these layers.
    pub fn artifact_names(manifest_digest: Digest, layers: &[LayerInfo]) -> Vec<CacheFile> {
        let mut files = vec![
            CacheFile {
                kind: CacheKind::Fsmeta,
                key: manifest_digest,
            },
            CacheFile {
                kind: CacheKind::Vmdk,
                key: manifest_digest,
            },
        ];
        for layer in layers {
            let f = CacheFile {
                kind: CacheKind::Layers,
                key: layer.diff_id,
            };
            if !files.contains(&f) {
                files.push(f);
            }
        }
        files
    }
}

/// Normalise an image reference to the Docker form `registry/repository[:tag][@digest]`.
///
/// A reference without a registry gets `docker.io`; a one-part Docker Hub
/// name gets `library/`. The first component counts as a registry when it
/// contains `.` or `:` or is `localhost`.
pub fn normalize_ref(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let (first, rest) = match name.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    let has_registry =
        rest.is_some() && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut out = if has_registry {
        name.to_string()
    } else {
        let path = name;
        if path.contains('/') {
            format!("docker.io/{path}")
        } else {
            format!("docker.io/library/{path}")
        }
    };
    if out.starts_with("docker.io/") && !out["docker.io/".len()..].contains('/') {
        out = format!("docker.io/library/{}", &out["docker.io/".len()..]);
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_references() {
        for (input, expected) in [
            ("python:3.12", "docker.io/library/python:3.12"),
            ("python", "docker.io/library/python"),
            ("library/python:3.12", "docker.io/library/python:3.12"),
            ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
            ("docker.io/python:3.12", "docker.io/library/python:3.12"),
            (
                "docker.io/library/python:3.12",
                "docker.io/library/python:3.12",
            ),
            ("ghcr.io/owner/app:1", "ghcr.io/owner/app:1"),
            ("localhost:5000/app", "localhost:5000/app"),
            ("localhost/app", "localhost/app"),
            ("python@sha256:abc", "docker.io/library/python@sha256:abc"),
        ] {
            assert_eq!(normalize_ref(input), expected, "{input}");
        }
    }

    #[test]
    fn fixture_metadata_name_is_the_ref_hash() {
        let f = CacheFile::metadata_for_ref("python:3.12");
        assert_eq!(
            f.file_name(),
            "9f39de2cc07aeb65b0c8d87b811d86acce5f86cd7b201b9e906d875b03aa70ff.json"
        );
    }

    #[test]
    fn cache_file_names_round_trip_and_refuse_others() {
        let d = Digest::of(b"x");
        for kind in CacheKind::ALL {
            let f = CacheFile { kind, key: d };
            assert_eq!(CacheFile::parse(kind, &f.file_name()), Some(f));
            assert_eq!(CacheFile::parse_rel(&f.rel_path()), Some(f));
        }
        assert_eq!(
            CacheFile::parse(CacheKind::Layers, &format!("sha256_{}.vmdk", d.hex())),
            None
        );
        assert_eq!(
            CacheFile::parse(CacheKind::Manifests, &format!("sha256_{}.json", d.hex())),
            None
        );
        assert_eq!(CacheFile::parse(CacheKind::Vmdk, "x.vmdk"), None);
        assert_eq!(CacheFile::parse_rel("blobs/x.json"), None);
    }

    #[test]
    fn metadata_digests_are_checked() {
        let raw_manifest = "{}";
        let raw_config = "{\"a\":1}";
        let doc = serde_json::json!({
            "manifest_digest": Digest::of(raw_manifest.as_bytes()),
            "config_digest": Digest::of(raw_config.as_bytes()),
            "raw_manifest_json": raw_manifest,
            "raw_config_json": raw_config,
            "config": {},
            "layers": [],
        });
        ImageMetadata::parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
        let mut bad = doc.clone();
        bad["raw_config_json"] = "{}".into();
        let err = ImageMetadata::parse(&serde_json::to_vec(&bad).unwrap()).unwrap_err();
        assert!(err.to_string().contains("raw_config_json hashes to"));
    }
}
