//! Fuzz the parsers of untrusted documents: snapshot manifests, image
//! metadata, and cache member names. Whatever the bytes, parsing returns
//! an error or a value whose canonical form parses back to the same digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msb_registry::image::{CacheFile, ImageMetadata};
use msb_registry::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = Manifest::parse(data) {
        let again = Manifest::parse(&parsed.manifest.canonical_bytes())
            .expect("canonical bytes of a valid manifest parse");
        assert_eq!(again.digest, parsed.digest);
    }
    if let Ok(meta) = ImageMetadata::parse(data) {
        let _ = meta.artifact_files();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(file) = CacheFile::parse_rel(text) {
            assert_eq!(file.rel_path(), text);
        }
    }
});
