//! `push --with-image`: the pinned image's cache artifacts as one manifest,
//! tagged `image-sha256-<hex>`.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};

use super::Dest;
use super::report::{Counts, PushedImage};
use super::transfer::{Body, store_one};
use crate::db::{self, SnapshotRow};
use crate::model::digest::Digest;
use crate::model::error::{Error, IoContext, Result};
use crate::model::image::CacheFile;
use crate::ops::registry::Registry;
use crate::remote::format::{
    Descriptor, EMPTY_CONFIG, IMAGE_CACHE_ARTIFACT, IMAGE_CACHE_FILE, OCI_MANIFEST, OciManifest,
    TITLE,
};
use crate::remote::reference::image_tag;
use crate::store::files::open_regular;

impl Registry {
    /// Store the cache artifacts of `snapshot`'s image as one manifest.
    pub(super) async fn push_image(
        &self,
        dest: &Dest<'_>,
        snapshot: &SnapshotRow,
        counts: &mut Counts,
    ) -> Result<PushedImage> {
        let (client, target) = (dest.client, dest.target);
        let conn = self.db().conn();
        let image = db::images::image_by_digest(conn, &snapshot.image_manifest_digest)?.ok_or_else(|| {
            Error::NotFound {
                what: "image",
                reference: format!(
                    "{} ({}) pinned by {}: its cache artifacts are not in the registry; push without --with-image",
                    snapshot.image_ref, snapshot.image_manifest_digest, snapshot.name
                ),
            }
        })?;
        let mut files = Vec::new();
        let mut layers = Vec::new();
        for (file, row) in db::images::image_cache_files(conn, &image)? {
            if row.is_none() {
                return Err(Error::NotFound {
                    what: "cache file",
                    reference: format!(
                        "cache/{} of image {}",
                        file.rel_path(),
                        image.manifest_digest
                    ),
                });
            }
            let path = self.layout().cache_file(&file);
            let desc = file_descriptor(&path, &file)?;
            layers.push(desc.clone());
            files.push((desc, path));
        }
        let (registry, repo) = (target.registry.as_str(), target.repository.as_str());
        let mut results = stream::iter(files.into_iter().map(|(desc, path)| async move {
            // Not built by this push: asked about even in a fresh repository.
            let stored = store_one(conn, dest, &desc, Body::File(&path), true).await?;
            Ok::<_, Error>((stored, desc))
        }))
        .buffer_unordered(dest.jobs);
        while let Some(done) = results.next().await {
            let (stored, desc) = done?;
            counts.add(&stored, desc.size);
            db::remote::record_remote(conn, registry, repo, &desc.digest, desc.size)?;
            crate::process::failpoint::hit(crate::process::failpoint::PUSH_BLOB_STORED)?;
        }
        drop(results);
        let empty = Bytes::from_static(b"{}");
        let config = Descriptor::of(EMPTY_CONFIG, &empty);
        let stored = self.store_blob(dest, &config, empty).await?;
        counts.add(&stored, config.size);
        let mut annotations = BTreeMap::new();
        annotations.insert(TITLE.to_string(), snapshot.image_ref.clone());
        let manifest = OciManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.into(),
            artifact_type: Some(IMAGE_CACHE_ARTIFACT.into()),
            config,
            layers,
            subject: None,
            annotations,
        };
        let bytes = Bytes::from(manifest.to_bytes());
        let digest = Digest::of(&bytes);
        let tag = image_tag(&image.manifest_digest);
        client.put_manifest(&target.repository, &tag, bytes).await?;
        Ok(PushedImage {
            manifest_digest: digest,
            tag,
        })
    }
}

/// A cache file's layer descriptor: its plain SHA-256, one read.
fn file_descriptor(path: &std::path::Path, file: &CacheFile) -> Result<Descriptor> {
    use sha2::Digest as _;
    let f = open_regular(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = f.read_at(&mut buf, offset).at("read", path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    let mut annotations = BTreeMap::new();
    annotations.insert(TITLE.to_string(), file.rel_path());
    Ok(Descriptor {
        media_type: IMAGE_CACHE_FILE.into(),
        digest: Digest::from_bytes(hasher.finalize().into()),
        size: offset,
        annotations,
    })
}
