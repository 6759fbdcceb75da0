//! Fuzz the parsers of untrusted documents and names: snapshot manifests,
//! image metadata, cache member names, image references, snapshot names
//! and digests. Whatever the bytes, parsing returns an error or a value
//! whose canonical form parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msb_registry::model::digest::Digest;
use msb_registry::model::image::{CacheFile, ImageMetadata, normalize_ref};
use msb_registry::SnapshotName;
use msb_registry::model::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = Manifest::parse(data) {
        let again = Manifest::parse(&parsed.manifest.canonical_bytes())
            .expect("canonical bytes of a valid manifest parse");
        assert_eq!(again.digest, parsed.digest);
        if let Some(integrity) = &parsed.manifest.upper.integrity {
            let _ = integrity.expected();
        }
    }
    if let Ok(meta) = ImageMetadata::parse(data) {
        let bytes = serde_json::to_vec(&meta).expect("metadata serializes");
        let again = ImageMetadata::parse(&bytes).expect("serialized metadata parses");
        assert_eq!(again, meta);
        let files = meta.artifact_files();
        assert!(files.len() >= 2 && files.len() <= meta.layers.len() + 2);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(file) = CacheFile::parse_rel(text) {
        assert_eq!(file.rel_path(), text);
    }
    let normal = normalize_ref(text);
    assert_eq!(
        normalize_ref(&normal),
        normal,
        "normalization is idempotent"
    );
    assert_eq!(
        CacheFile::metadata_for_ref(text),
        CacheFile::metadata_for_ref(&normal)
    );
    if let Ok(name) = text.parse::<SnapshotName>() {
        assert_eq!(name.to_string(), text);
    }
    if let Ok(digest) = text.parse::<Digest>() {
        assert_eq!(digest.to_string().parse::<Digest>().ok(), Some(digest));
    }
});
