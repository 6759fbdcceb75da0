//! The OCI form of a snapshot (docs/oci.md; DESIGN §8): one
//! image manifest per snapshot whose config is the canonical manifest.json
//! (so the config digest is the snapshot digest), whose first layer is the
//! chunk map, and whose other layers are packs: concatenated zstd frames,
//! one per chunk, fetched whole or by HTTP range. Building
//! and checking these documents is all this module does; a pulled document
//! is input like an archive member, checked before anything trusts it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::model::manifest::{MAX_MANIFEST_BYTES, Manifest, ParsedManifest, is_normal_file_name};

/// `mediaType` of the manifests we push.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// `artifactType` of a snapshot's manifest.
pub const SNAPSHOT_ARTIFACT: &str = "application/vnd.microsandbox.snapshot.v1";
/// `mediaType` of the config blob: the canonical snapshot manifest.
pub const SNAPSHOT_CONFIG: &str = "application/vnd.microsandbox.snapshot.manifest.v1+json";
/// `mediaType` of the chunk map, the first layer.
pub const CHUNK_MAP: &str = "application/vnd.microsandbox.snapshot.chunkmap.v1+json";
/// `mediaType` of a pack: zstd frames of chunks, one after another (itself
/// a valid multi-frame zstd stream).
pub const PACK: &str = "application/vnd.microsandbox.snapshot.pack.v1+zstd";
/// `artifactType` of an image's cache artifacts.
pub const IMAGE_CACHE_ARTIFACT: &str = "application/vnd.microsandbox.image-cache.v1";
/// `artifactType` of a snapshot's signatures (tagged `sha256-<hex>.sig`).
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.microsandbox.snapshot.signatures.v1";
/// `mediaType` of a cache file layer.
pub const IMAGE_CACHE_FILE: &str = "application/vnd.microsandbox.image-cache.file.v1";
/// The OCI empty config (`{}`), for the image-cache manifest.
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
/// Annotation: a layer's file name, or the manifest's snapshot name.
pub const TITLE: &str = "org.opencontainers.image.title";
/// Annotation: the snapshot's creation time.
pub const CREATED: &str = "org.opencontainers.image.created";
/// Annotation: the snapshot digest.
pub const SNAPSHOT_DIGEST: &str = "dev.microsandbox.snapshot.digest";
/// Annotation: the parent snapshot digest.
pub const SNAPSHOT_PARENT: &str = "dev.microsandbox.snapshot.parent";

/// The largest manifest read from a registry (the limit Distribution
/// itself enforces on a push).
pub const MAX_OCI_MANIFEST_BYTES: u64 = 4 << 20;
/// The largest chunk map read from a registry.
pub const MAX_CHUNK_MAP_BYTES: u64 = 32 << 20;
/// The largest pack a pulled manifest may list.
pub const MAX_PACK_BYTES: u64 = 1 << 30;
/// Chunk sizes a pulled chunk map may use.
pub const CHUNK_SIZES: std::ops::RangeInclusive<u64> = 4096..=(4 << 20);

/// The most a zstd frame of `chunk_size` bytes may take: zstd's own bound
/// for incompressible input, with room for its frame header.
pub fn max_chunk_frame(chunk_size: u64) -> u64 {
    chunk_size + chunk_size / 128 + 1024
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the content is.
    pub media_type: String,
    /// SHA-256 of its bytes.
    pub digest: Digest,
    /// Its length in bytes.
    pub size: u64,
    /// Annotations, when any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// A descriptor of `bytes`.
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
        }
    }
}

/// An OCI image manifest (the fields we write and read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciManifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`OCI_MANIFEST`].
    pub media_type: String,
    /// [`SNAPSHOT_ARTIFACT`] or [`IMAGE_CACHE_ARTIFACT`].
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers.
    pub layers: Vec<Descriptor>,
    /// The parent's manifest, when in the same repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl OciManifest {
    /// Its bytes as pushed.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    /// Parse a manifest a registry served, bounded and checked for the
    /// shape of `artifact` (one of the two artifact types).
    pub fn parse(bytes: &[u8], artifact: &str, subject: &str) -> Result<OciManifest> {
        let bad = |reason: String| malformed(subject, reason);
        if bytes.len() as u64 > MAX_OCI_MANIFEST_BYTES {
            return Err(bad(format!(
                "manifest of {} bytes exceeds {MAX_OCI_MANIFEST_BYTES}",
                bytes.len()
            )));
        }
        let m: OciManifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not an OCI manifest: {e}")))?;
        if m.schema_version != 2 || m.media_type != OCI_MANIFEST {
            return Err(bad(format!(
                "not an OCI image manifest (schemaVersion {}, mediaType {})",
                m.schema_version,
                crate::model::text::escape(&m.media_type)
            )));
        }
        if m.artifact_type.as_deref() != Some(artifact) {
            return Err(bad(format!(
                "artifactType is {}, not {artifact}: not a microsandbox {}",
                crate::model::text::escape(m.artifact_type.as_deref().unwrap_or("(none)")),
                match artifact {
                    SNAPSHOT_ARTIFACT => "snapshot",
                    SIGNATURE_ARTIFACT => "snapshot's signatures",
                    _ => "image cache",
                }
            )));
        }
        Ok(m)
    }
}

/// A refusal of something a registry served.
pub fn malformed(subject: &str, reason: String) -> Error {
    Error::RemoteRejected {
        subject: subject.to_string(),
        reason,
    }
}

/// One file of a snapshot in a chunk map: its size and data chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapFile {
    /// File name in the snapshot directory.
    pub path: String,
    /// Apparent size.
    pub size: u64,
    /// `[offset, index into chunks]`, by offset; offsets not listed are holes.
    pub extents: Vec<(u64, u32)>,
}

/// One distinct chunk: its digest, and where its zstd frame is:
/// `[chunk digest, pack index, offset in the pack, frame length]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapChunk(pub Digest, pub u32, pub u64, pub u64);

impl MapChunk {
    /// SHA-256 of the chunk's uncompressed bytes.
    pub fn chunk(&self) -> Digest {
        self.0
    }
    /// Index of its pack in [`ChunkMap::packs`].
    pub fn pack(&self) -> usize {
        self.1 as usize
    }
    /// Offset of its frame in the pack.
    pub fn offset(&self) -> u64 {
        self.2
    }
    /// Bytes of its frame.
    pub fn frame_len(&self) -> u64 {
        self.3
    }
}

/// The chunk map: how a snapshot's files are put together from chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkMap {
    /// Always 1.
    pub schema: u32,
    /// The snapshot it belongs to.
    pub snapshot: Digest,
    /// The size the files were cut at.
    pub chunk_size: u64,
    /// Always "zstd".
    pub compression: String,
    /// The packs holding the chunks (each a layer of the manifest).
    pub packs: Vec<Digest>,
    /// Every distinct chunk, once.
    pub chunks: Vec<MapChunk>,
    /// Every file of the snapshot but manifest.json.
    pub files: Vec<MapFile>,
    /// `[chunk index, base chunk index]`: the chunk's frame was compressed
    /// with the base chunk's bytes as its zstd prefix (`zstd --patch-from`;
    /// the base is the parent's chunk at the same offset). A base is never
    /// itself a delta.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<(u32, u32)>,
}

impl ChunkMap {
    /// The size of each pack, in the order of [`ChunkMap::packs`], as the
    /// manifest's `layers` list them (the map was checked against them).
    pub fn pack_sizes(&self, layers: &[Descriptor]) -> Vec<u64> {
        let sizes: HashMap<Digest, u64> = layers.iter().map(|l| (l.digest, l.size)).collect();
        self.packs
            .iter()
            .map(|p| sizes.get(p).copied().unwrap_or(0))
            .collect()
    }

    /// Its bytes as pushed.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a chunk map always serializes")
    }

    /// The base chunk index of each chunk that is a delta, by chunk index.
    pub fn bases(&self) -> Vec<Option<usize>> {
        let mut bases = vec![None; self.chunks.len()];
        for &(c, b) in &self.deltas {
            bases[c as usize] = Some(b as usize);
        }
        bases
    }

    /// Length of the chunk at `offset` of `file`.
    pub fn chunk_len(&self, file: &MapFile, offset: u64) -> u64 {
        self.chunk_size.min(file.size - offset)
    }

    /// Parse and check a chunk map a registry served for `snapshot`,
    /// whose manifest lists `layers`: every rule that keeps the work it
    /// asks for bounded and its files well formed.
    pub fn parse(
        bytes: &[u8],
        snapshot: &ParsedManifest,
        layers: &[Descriptor],
        max_file_bytes: u64,
    ) -> Result<ChunkMap> {
        let subject = format!("chunk map of {}", snapshot.digest);
        let bad = |reason: String| malformed(&subject, reason);
        let map: ChunkMap =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a chunk map: {e}")))?;
        map.check_header(snapshot).map_err(bad)?;
        let pack_sizes = map.check_packs(layers).map_err(bad)?;
        map.check_chunks(&pack_sizes).map_err(bad)?;
        map.check_deltas().map_err(bad)?;
        map.check_files(snapshot, max_file_bytes).map_err(bad)?;
        Ok(map)
    }

    /// Schema, compression, snapshot and chunk size.
    fn check_header(&self, snapshot: &ParsedManifest) -> std::result::Result<(), String> {
        if self.schema != 1 || self.compression != "zstd" {
            return Err(format!(
                "schema {} / compression {} is not schema 1 / zstd",
                self.schema,
                crate::model::text::escape(&self.compression)
            ));
        }
        if self.snapshot != snapshot.digest {
            return Err(format!("describes snapshot {}", self.snapshot));
        }
        if !CHUNK_SIZES.contains(&self.chunk_size) || !self.chunk_size.is_power_of_two() {
            return Err(format!(
                "chunk size {} is not a power of two between 4 KiB and 4 MiB",
                self.chunk_size
            ));
        }
        Ok(())
    }

    /// Every pack a layer of the manifest, once; returns their sizes.
    fn check_packs(&self, layers: &[Descriptor]) -> std::result::Result<Vec<u64>, String> {
        let listed: HashMap<Digest, u64> = layers.iter().map(|l| (l.digest, l.size)).collect();
        let mut pack_sizes = Vec::with_capacity(self.packs.len());
        for p in &self.packs {
            match listed.get(p) {
                Some(&size)
                    if !pack_sizes.is_empty() && self.packs[..pack_sizes.len()].contains(p) =>
                {
                    return Err(format!("lists pack {p} twice ({size} bytes)"));
                }
                Some(&size) => pack_sizes.push(size),
                None => {
                    return Err(format!(
                        "pack {p} is not a layer of the snapshot's manifest"
                    ));
                }
            }
        }
        Ok(pack_sizes)
    }

    /// Every chunk once, its frame inside its pack and no larger than a
    /// chunk compresses to.
    fn check_chunks(&self, pack_sizes: &[u64]) -> std::result::Result<(), String> {
        let mut seen = HashSet::new();
        for c in &self.chunks {
            if !seen.insert(c.chunk()) {
                return Err(format!("lists chunk {} twice", c.chunk()));
            }
            let Some(&pack_size) = pack_sizes.get(c.pack()) else {
                return Err(format!(
                    "chunk {}: pack index {} out of range",
                    c.chunk(),
                    c.pack()
                ));
            };
            if c.frame_len() == 0 || c.frame_len() > max_chunk_frame(self.chunk_size) {
                return Err(format!(
                    "chunk {}: a frame of {} bytes cannot hold a chunk of at most {} bytes",
                    c.chunk(),
                    c.frame_len(),
                    self.chunk_size
                ));
            }
            if c.offset()
                .checked_add(c.frame_len())
                .is_none_or(|end| end > pack_size)
            {
                return Err(format!(
                    "chunk {}: frame at {}+{} runs past its pack's {pack_size} bytes",
                    c.chunk(),
                    c.offset(),
                    c.frame_len()
                ));
            }
        }
        Ok(())
    }

    /// Each delta names two chunks, has one base, and its base is plain.
    fn check_deltas(&self) -> std::result::Result<(), String> {
        let mut delta_of = vec![None; self.chunks.len()];
        for &(chunk, base) in &self.deltas {
            let (c, b) = (chunk as usize, base as usize);
            if c >= self.chunks.len() || b >= self.chunks.len() || c == b {
                return Err(format!("delta [{chunk}, {base}] names no pair of chunks"));
            }
            if delta_of[c].replace(b).is_some() {
                return Err(format!("chunk index {chunk} has two bases"));
            }
        }
        if let Some(&(chunk, base)) = self
            .deltas
            .iter()
            .find(|&&(_, b)| delta_of[b as usize].is_some())
        {
            return Err(format!(
                "delta [{chunk}, {base}]: its base is itself a delta"
            ));
        }
        Ok(())
    }

    /// Plain, distinct file names within the size limit, the upper among
    /// them at its manifest's size, and each file's extents in order,
    /// aligned and inside it.
    fn check_files(
        &self,
        snapshot: &ParsedManifest,
        max_file_bytes: u64,
    ) -> std::result::Result<(), String> {
        let upper = &snapshot.manifest.upper;
        let mut names = HashSet::new();
        let mut lengths = HashMap::new();
        for f in &self.files {
            let name = crate::model::text::escape(&f.path);
            if !is_normal_file_name(&f.path) || f.path == "manifest.json" {
                return Err(format!(
                    "file name {name} is not a plain snapshot file name"
                ));
            }
            if !names.insert(f.path.as_str()) {
                return Err(format!("lists file {name} twice"));
            }
            if f.path != upper.file {
                return Err(format!(
                    "lists file {name}, which is not in the snapshot: its manifest names only the upper {}",
                    crate::model::text::escape(&upper.file)
                ));
            }
            if f.size > max_file_bytes {
                return Err(format!(
                    "file {name} claims {} bytes, more than the {max_file_bytes}-byte limit (--max-file-size)",
                    f.size
                ));
            }
            if f.path == upper.file && f.size != upper.size_bytes {
                return Err(format!(
                    "upper {name} has {} bytes; the manifest says {}",
                    f.size, upper.size_bytes
                ));
            }
            self.check_extents(f, &name, &mut lengths)?;
        }
        if !names.contains(upper.file.as_str()) {
            return Err(format!(
                "has no entry for the upper {}",
                crate::model::text::escape(&upper.file)
            ));
        }
        Ok(())
    }

    /// A file's extents: in order, aligned, inside it, naming a chunk,
    /// and each chunk the same length wherever it is used (`lengths`, by
    /// chunk index): a short final chunk cannot stand in for a whole one,
    /// nor a whole one run past a file's end.
    fn check_extents(
        &self,
        f: &MapFile,
        name: &str,
        lengths: &mut HashMap<u32, u64>,
    ) -> std::result::Result<(), String> {
        let mut next = 0u64;
        for &(offset, index) in &f.extents {
            if offset < next || offset % self.chunk_size != 0 || offset >= f.size {
                return Err(format!(
                    "file {name}: offset {offset} is out of order, unaligned or past its end"
                ));
            }
            if index as usize >= self.chunks.len() {
                return Err(format!("file {name}: chunk index {index} out of range"));
            }
            let len = self.chunk_len(f, offset);
            if let Some(&other) = lengths.get(&index).filter(|&&l| l != len) {
                return Err(format!(
                    "file {name}: chunk {} is used for {len} bytes at offset {offset} and for {other} bytes elsewhere",
                    self.chunks[index as usize].chunk()
                ));
            }
            lengths.insert(index, len);
            next = offset + self.chunk_size;
        }
        Ok(())
    }
}

/// Parse a config blob: it must be a snapshot manifest in its canonical
/// bytes, whose digest is the blob's digest.
pub fn parse_config(bytes: &[u8], subject: &str) -> Result<ParsedManifest> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(malformed(
            subject,
            format!(
                "config of {} bytes exceeds {MAX_MANIFEST_BYTES}",
                bytes.len()
            ),
        ));
    }
    let parsed = Manifest::parse(bytes).map_err(|source| Error::Manifest {
        path: subject.to_string(),
        source,
    })?;
    if parsed.manifest.canonical_bytes() != bytes {
        return Err(malformed(
            subject,
            "config is a snapshot manifest but not in its canonical bytes".into(),
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::{Format, ImagePin, Upper};

    fn snapshot() -> ParsedManifest {
        let m = Manifest {
            schema: 1,
            format: Format::Raw,
            fstype: "ext4".into(),
            image: ImagePin {
                reference: "python:3.12".into(),
                manifest_digest: Digest::of(b"image"),
            },
            parent: None,
            created_at: "2026-10-01T09:00:00Z".into(),
            labels: Default::default(),
            upper: Upper {
                file: "upper.ext4".into(),
                size_bytes: 1 << 20,
                integrity: None,
            },
            source_sandbox: None,
        };
        Manifest::parse(&m.canonical_bytes()).unwrap()
    }

    fn map(s: &ParsedManifest) -> (ChunkMap, Vec<Descriptor>) {
        let blob = Descriptor::of(PACK, b"a pack of frames");
        let map = ChunkMap {
            schema: 1,
            snapshot: s.digest,
            chunk_size: 131072,
            compression: "zstd".into(),
            packs: vec![blob.digest],
            chunks: vec![MapChunk(Digest::of(b"chunk"), 0, 2, 14)],
            files: vec![MapFile {
                path: "upper.ext4".into(),
                size: 1 << 20,
                extents: vec![(0, 0), (131072 * 3, 0)],
            }],
            deltas: vec![],
        };
        (map, vec![blob])
    }

    #[test]
    fn a_chunk_map_round_trips_and_its_rules_hold() {
        let s = snapshot();
        let (m, layers) = map(&s);
        let parsed = ChunkMap::parse(&m.to_bytes(), &s, &layers, 1 << 40).unwrap();
        assert_eq!(parsed, m);

        let refuse = |edit: &dyn Fn(&mut ChunkMap), what: &str| {
            let mut bad = m.clone();
            edit(&mut bad);
            let e = ChunkMap::parse(&bad.to_bytes(), &s, &layers, 1 << 40).unwrap_err();
            assert_eq!(e.exit_code(), 6, "{what}: {e}");
        };
        refuse(&|m| m.files[0].size = 1 << 62, "2^62 bytes");
        refuse(&|m| m.files[0].extents.reverse(), "out of order");
        refuse(&|m| m.files[0].extents[1].0 = 5, "unaligned");
        refuse(&|m| m.files[0].extents[1].0 = 1 << 20, "past the end");
        refuse(&|m| m.files[0].extents[1].1 = 7, "index out of range");
        refuse(&|m| m.chunk_size = 3000, "chunk size");
        refuse(&|m| m.chunk_size = 1 << 30, "huge chunk size");
        refuse(&|m| m.chunks[0].2 = 3, "frame past the pack's end");
        refuse(&|m| m.chunks[0].2 = u64::MAX, "offset overflow");
        refuse(&|m| m.chunks[0].3 = 0, "empty frame");
        refuse(
            &|m| m.chunks[0].3 = 1 << 20,
            "frame larger than a chunk compresses to",
        );
        refuse(&|m| m.chunks[0].1 = 1, "pack index out of range");
        refuse(&|m| m.packs[0] = Digest::of(b"x"), "pack not a layer");
        refuse(&|m| m.packs.push(m.packs[0]), "pack listed twice");
        refuse(&|m| m.chunks.push(m.chunks[0]), "duplicate chunk");
        let with_base = |m: &mut ChunkMap| {
            let mut base = m.chunks[0];
            base.0 = Digest::of(b"base");
            m.chunks.push(base);
        };
        let mut delta = m.clone();
        with_base(&mut delta);
        delta.deltas = vec![(0, 1)];
        assert_eq!(
            ChunkMap::parse(&delta.to_bytes(), &s, &layers, 1 << 40)
                .unwrap()
                .bases(),
            [Some(1), None]
        );
        refuse(
            &|m| {
                with_base(m);
                m.deltas = vec![(0, 0)];
            },
            "own base",
        );
        refuse(
            &|m| {
                with_base(m);
                m.deltas = vec![(0, 2)];
            },
            "base out of range",
        );
        refuse(
            &|m| {
                with_base(m);
                m.deltas = vec![(0, 1), (0, 1)];
            },
            "two bases",
        );
        refuse(
            &|m| {
                with_base(m);
                m.deltas = vec![(0, 1), (1, 0)];
            },
            "base is a delta",
        );
        refuse(&|m| m.files[0].path = "../x".into(), "path");
        refuse(&|m| m.files[0].path = "other".into(), "no upper");
        refuse(&|m| m.snapshot = Digest::of(b"x"), "other snapshot");
        let mut notes = m.clone();
        notes.files.push(MapFile {
            path: "notes.txt".into(),
            ..m.files[0].clone()
        });
        let e = ChunkMap::parse(&notes.to_bytes(), &s, &layers, 1 << 40).unwrap_err();
        assert!(e.to_string().contains("notes.txt, which is not in"), "{e}");
    }

    #[test]
    fn a_chunk_is_one_length_wherever_it_is_used() {
        let mut short = snapshot().manifest;
        short.upper.size_bytes = 4096 * 3 + 100;
        let s = Manifest::parse(&short.canonical_bytes()).unwrap();
        let (mut m, layers) = map(&s);
        m.chunk_size = 4096;
        m.files[0].size = 4096 * 3 + 100;
        m.files[0].extents = vec![(4096, 0), (4096 * 2, 0)];
        assert!(ChunkMap::parse(&m.to_bytes(), &s, &layers, 1 << 40).is_ok());
        // The final 100 bytes' chunk at a whole chunk's offset, or a whole
        // chunk at the final offset: either way the file would grow.
        for extents in [vec![(0, 0), (4096 * 3, 0)], vec![(4096 * 3, 0)]] {
            m.files[0].extents = extents;
            m.files[0].extents.insert(0, (4096, 0));
            m.files[0].extents.sort();
            let e = ChunkMap::parse(&m.to_bytes(), &s, &layers, 1 << 40).unwrap_err();
            assert_eq!(e.exit_code(), 6, "{e}");
            assert!(
                e.to_string().contains("for 100 bytes at offset 12288"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_config_must_be_the_canonical_manifest() {
        let s = snapshot();
        let bytes = s.manifest.canonical_bytes();
        assert_eq!(parse_config(&bytes, "c").unwrap().digest, s.digest);
        let spaced = serde_json::to_vec_pretty(&s.manifest).unwrap();
        assert_eq!(parse_config(&spaced, "c").unwrap_err().exit_code(), 6);
        assert_eq!(parse_config(b"{}", "c").unwrap_err().exit_code(), 5);
    }

    #[test]
    fn a_manifest_of_another_kind_is_refused() {
        let config = Descriptor::of(SNAPSHOT_CONFIG, b"{}");
        let m = OciManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.into(),
            artifact_type: Some(IMAGE_CACHE_ARTIFACT.into()),
            config,
            layers: vec![],
            subject: None,
            annotations: BTreeMap::new(),
        };
        let bytes = m.to_bytes();
        assert!(OciManifest::parse(&bytes, IMAGE_CACHE_ARTIFACT, "m").is_ok());
        assert_eq!(
            OciManifest::parse(&bytes, SNAPSHOT_ARTIFACT, "m")
                .unwrap_err()
                .exit_code(),
            6
        );
        assert_eq!(
            OciManifest::parse(b"[1]", SNAPSHOT_ARTIFACT, "m")
                .unwrap_err()
                .exit_code(),
            6
        );
    }
}
