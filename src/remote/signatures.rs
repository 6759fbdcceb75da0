//! Snapshot signatures in an OCI registry, found without a referrers API
//! (Distribution 2.8 has none): one artifact per snapshot, tagged
//! `sha256-<hex>.sig` after the snapshot's digest (cosign's scheme, keyed by
//! the snapshot rather than by its OCI manifest, since a signature is over
//! the snapshot digest and any manifest of the snapshot must find it). Its
//! layers are the armored SSHSIG signatures, one blob each; its config is
//! OCI's empty `{}`.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::remote::Client;
use crate::remote::format::{
    Descriptor, EMPTY_CONFIG, OCI_MANIFEST, OciManifest, SIGNATURE_ARTIFACT, SNAPSHOT_DIGEST,
    malformed,
};
use crate::remote::reference::{joined, snapshot_tag};
use crate::trust::sshsig::{MAX_SIGNATURE_BYTES, MAX_SIGNATURES, Signature};

/// The media type of one signature layer: an armored SSHSIG.
pub const SIGNATURE_LAYER: &str = "application/vnd.microsandbox.snapshot.signature.v1+sshsig";

/// The tag of a snapshot's signatures: `sha256-<hex>.sig`.
pub fn signature_tag(snapshot: &Digest) -> String {
    format!("{}.sig", snapshot_tag(snapshot))
}

/// Store `armored` (at most [`MAX_SIGNATURES`]) as the signatures of
/// `snapshot` in `repository`, replacing what the tag named.
pub async fn push_signatures(
    client: &Client,
    repository: &str,
    snapshot: &Digest,
    armored: &[String],
) -> Result<()> {
    let empty = Bytes::from_static(b"{}");
    let config = Descriptor::of(EMPTY_CONFIG, &empty);
    client.put_blob(repository, &config.digest, empty).await?;
    let mut layers = Vec::new();
    for a in armored.iter().take(MAX_SIGNATURES) {
        let body = Bytes::from(a.clone().into_bytes());
        let desc = Descriptor::of(SIGNATURE_LAYER, &body);
        if client.head_blob(repository, &desc.digest).await?.is_none() {
            client.put_blob(repository, &desc.digest, body).await?;
        }
        layers.push(desc);
    }
    let mut annotations = BTreeMap::new();
    annotations.insert(SNAPSHOT_DIGEST.to_string(), snapshot.to_string());
    let manifest = OciManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST.into(),
        artifact_type: Some(SIGNATURE_ARTIFACT.into()),
        config,
        layers,
        subject: None,
        annotations,
    };
    let tag = signature_tag(snapshot);
    client
        .put_manifest(repository, &tag, Bytes::from(manifest.to_bytes()))
        .await
}

/// The signatures `repository` holds for `snapshot` (none when it has no
/// `sha256-<hex>.sig` tag), each parsed, bounded in size and count, and
/// by distinct keys; each is labelled with where it came from. Whether a
/// signature verifies is the caller's check.
pub async fn fetch_signatures(
    client: &Client,
    repository: &str,
    snapshot: &Digest,
) -> Result<Vec<(String, Signature)>> {
    let tag = signature_tag(snapshot);
    let subject = joined(client.registry(), repository, &tag);
    let Some((bytes, _)) = client.get_manifest(repository, &tag).await? else {
        return Ok(Vec::new());
    };
    let manifest = OciManifest::parse(&bytes, SIGNATURE_ARTIFACT, &subject)?;
    if manifest.layers.len() > MAX_SIGNATURES {
        return Err(malformed(
            &subject,
            format!(
                "{} signatures; at most {MAX_SIGNATURES} per snapshot",
                manifest.layers.len()
            ),
        ));
    }
    let mut out: Vec<(String, Signature)> = Vec::new();
    for (i, layer) in manifest.layers.iter().enumerate() {
        let source = format!("{subject} layer {i}");
        if layer.media_type != SIGNATURE_LAYER || layer.size > MAX_SIGNATURE_BYTES {
            return Err(malformed(
                &source,
                format!(
                    "not a signature of at most {MAX_SIGNATURE_BYTES} bytes ({SIGNATURE_LAYER})"
                ),
            ));
        }
        let body = client
            .get_blob(repository, &layer.digest, layer.size)
            .await?;
        let parsed = Signature::parse(&body).map_err(|why| Error::signature(&source, why))?;
        if out.iter().any(|(_, s)| s.fingerprint == parsed.fingerprint) {
            return Err(Error::signature(
                &source,
                format!(
                    "a second signature by key {} of {snapshot}",
                    parsed.fingerprint
                ),
            ));
        }
        out.push((source, parsed));
    }
    Ok(out)
}
