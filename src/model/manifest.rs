//! The snapshot manifest (`manifest.json`, schema 1): parsing with every rule
//! of DESIGN §1, canonical bytes, and the digest that is a snapshot's identity.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::model::digest::{Digest, DigestError};
use crate::model::text::{escape, has_terminal_control};

/// The largest manifest accepted; anything bigger is refused before it is buffered.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// The integrity algorithms this registry can check.
pub const INTEGRITY_SHA256: &str = "sha256";
/// See [`crate::model::digest::SparseSha256V1`].
pub const INTEGRITY_SPARSE_SHA256_V1: &str = "msb-sparse-sha256-v1";

/// A rule of the manifest schema that a document breaks.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, a wrong type, an unknown or missing field.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// `schema` other than 1.
    #[error("unsupported schema {0}; expected 1")]
    Schema(u32),
    /// `fstype` is empty.
    #[error("field fstype is empty")]
    EmptyFstype,
    /// `image.ref` is empty.
    #[error("field image.ref is empty")]
    EmptyImageRef,
    /// `upper.file` is not one normal file name.
    #[error("field upper.file {0:?} is not a single normal file name")]
    UpperFile(String),
    /// `created_at` is not RFC 3339.
    #[error("field created_at {0:?} is not an RFC 3339 timestamp")]
    CreatedAt(String),
    /// `upper.integrity.algorithm` is not one this registry knows.
    #[error("unsupported integrity algorithm {0:?}; supported: sha256, msb-sparse-sha256-v1")]
    UnsupportedIntegrity(String),
    /// `upper.integrity.digest` is malformed.
    #[error("field upper.integrity.digest: {0}")]
    IntegrityDigest(DigestError),
    /// A text field holds a character a terminal would interpret.
    #[error(
        "field {0} holds a control character (C0, DEL, C1 or a bidirectional override); names, labels and file names may not"
    )]
    ControlCharacter(String),
    /// A JSON object names the same key twice.
    #[error("key {0:?} appears twice in {1}; a manifest names each key once")]
    DuplicateKey(String, &'static str),
    /// The document is larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {0} bytes; the limit is 1 MiB")]
    TooLarge(u64),
}

/// Disk image format of the upper file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A raw disk image.
    Raw,
    /// A qcow2 disk image.
    Qcow2,
}

impl Format {
    /// The name used in the manifest and the index.
    pub fn as_str(&self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// The OCI image a snapshot was taken on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePin {
    /// The image reference as the user gave it.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The image manifest digest the snapshot is pinned to.
    pub manifest_digest: Digest,
}

/// A recorded checksum of the upper file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Integrity {
    /// `sha256` or `msb-sparse-sha256-v1`.
    pub algorithm: String,
    /// `sha256:<hex>`; kept as text until the algorithm is known.
    pub digest: String,
}

/// The writable disk captured by the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upper {
    /// File name inside the snapshot directory.
    pub file: String,
    /// Apparent (logical) size in bytes.
    pub size_bytes: u64,
    /// Recorded checksum, if any (the field itself is required).
    #[serde(deserialize_with = "required")]
    pub integrity: Option<Integrity>,
}

/// A snapshot manifest, fields in canonical order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always 1.
    pub schema: u32,
    /// Upper file format.
    pub format: Format,
    /// File-system type inside the upper.
    pub fstype: String,
    /// The pinned image.
    pub image: ImagePin,
    /// The parent snapshot's digest (the field is required even when null).
    #[serde(deserialize_with = "required")]
    pub parent: Option<Digest>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Free-form labels, serialized with keys sorted.
    #[serde(deserialize_with = "unique_keys")]
    pub labels: BTreeMap<String, String>,
    /// The upper file.
    pub upper: Upper,
    /// The sandbox the snapshot was taken from (required even when null).
    #[serde(deserialize_with = "required")]
    pub source_sandbox: Option<String>,
}

/// Deserializing through this makes an `Option` field mandatory: serde only
/// defaults a missing `Option` to `None` when no `deserialize_with` is set.
fn required<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

/// A map whose keys must be unique: a repeated label would otherwise
/// silently keep the last value, so two documents with different bytes
/// (and meanings to another reader) would share one digest.
fn unique_keys<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of string labels")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(ManifestError::DuplicateKey(
                        k, "labels",
                    )));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique)
}

/// A manifest together with its digest, the pair every other module uses.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    /// The validated document.
    pub manifest: Manifest,
    /// `sha256` of [`Manifest::canonical_bytes`].
    pub digest: Digest,
}

impl Manifest {
    /// Parse and validate a manifest document.
    pub fn parse(bytes: &[u8]) -> Result<ParsedManifest, ManifestError> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len() as u64));
        }
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        manifest.validate()?;
        let digest = manifest.digest();
        Ok(ParsedManifest { manifest, digest })
    }

    fn validate(&self) -> Result<(), ManifestError> {
        if self.schema != 1 {
            return Err(ManifestError::Schema(self.schema));
        }
        if self.fstype.is_empty() {
            return Err(ManifestError::EmptyFstype);
        }
        if self.image.reference.is_empty() {
            return Err(ManifestError::EmptyImageRef);
        }
        self.no_control_characters()?;
        if !is_normal_file_name(&self.upper.file) || self.upper.file == "manifest.json" {
            return Err(ManifestError::UpperFile(self.upper.file.clone()));
        }
        self.created_at_unix()?;
        if let Some(integrity) = &self.upper.integrity {
            integrity.expected()?;
        }
        Ok(())
    }

    fn no_control_characters(&self) -> Result<(), ManifestError> {
        let bad = |field: String, text: &str| {
            has_terminal_control(text)
                .then(|| ManifestError::ControlCharacter(escape(&field).into_owned()))
        };
        let fields = [
            ("fstype".to_string(), self.fstype.as_str()),
            ("image.ref".to_string(), self.image.reference.as_str()),
            ("upper.file".to_string(), self.upper.file.as_str()),
            (
                "source_sandbox".to_string(),
                self.source_sandbox.as_deref().unwrap_or(""),
            ),
        ];
        let labels = self.labels.iter().flat_map(|(k, v)| {
            [
                (format!("labels key {k:?}"), k.as_str()),
                (format!("labels.{k}"), v.as_str()),
            ]
        });
        match fields
            .into_iter()
            .chain(labels)
            .find_map(|(f, t)| bad(f, t))
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The canonical bytes: compact JSON, fields in schema order, labels sorted.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    /// The snapshot's identity.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.canonical_bytes())
    }

    /// `created_at` as seconds since the Unix epoch (clamped at 0).
    pub fn created_at_unix(&self) -> Result<u64, ManifestError> {
        unix_seconds(&self.created_at)
    }
}

/// An RFC 3339 timestamp as seconds since the Unix epoch (clamped at 0), for
/// `created_at` values the index recorded from validated manifests.
pub fn unix_seconds(rfc3339: &str) -> Result<u64, ManifestError> {
    let t = OffsetDateTime::parse(rfc3339, &Rfc3339)
        .map_err(|_| ManifestError::CreatedAt(rfc3339.to_string()))?;
    Ok(t.unix_timestamp().max(0) as u64)
}

/// An RFC 3339 time as Unix nanoseconds, for ordering: offsets, fractions
/// and lowercase `t`/`z` all count. `None` when it does not parse.
pub fn unix_nanos(rfc3339: &str) -> Option<i128> {
    OffsetDateTime::parse(&rfc3339.to_ascii_uppercase(), &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos())
}

impl Integrity {
    /// The algorithm, checked to be supported, and the parsed digest.
    pub fn expected(&self) -> Result<(&str, Digest), ManifestError> {
        match self.algorithm.as_str() {
            INTEGRITY_SHA256 | INTEGRITY_SPARSE_SHA256_V1 => {
                let d = self
                    .digest
                    .parse()
                    .map_err(ManifestError::IntegrityDigest)?;
                Ok((self.algorithm.as_str(), d))
            }
            other => Err(ManifestError::UnsupportedIntegrity(other.to_string())),
        }
    }
}

/// One path component that is a plain name: not empty, no `/` or NUL, not `.` or `..`.
pub fn is_normal_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && !name.contains('\\')
        && !has_terminal_control(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = r#"{"schema":1,"format":"raw","fstype":"ext4","image":{"ref":"docker.io/library/python:3.12","manifest_digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},"parent":null,"created_at":"2026-05-01T12:00:00Z","labels":{"owner":"alice","stage":"post-pip-install"},"upper":{"file":"upper.ext4","size_bytes":4294967296,"integrity":{"algorithm":"msb-sparse-sha256-v1","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}},"source_sandbox":"build-1"}"#;
    const VECTOR_DIGEST: &str =
        "sha256:72005520f25b0532f88e41a3bd3ad8d642189582f3784fcb22ec8eb1a7b8a589";

    fn value() -> serde_json::Value {
        serde_json::from_str(VECTOR).unwrap()
    }

    fn parse_value(v: &serde_json::Value) -> Result<ParsedManifest, ManifestError> {
        Manifest::parse(&serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn test_vector_digest() {
        let p = Manifest::parse(VECTOR.as_bytes()).unwrap();
        assert_eq!(p.digest.to_string(), VECTOR_DIGEST);
        assert_eq!(p.manifest.canonical_bytes(), VECTOR.as_bytes());
    }

    #[test]
    fn whitespace_and_label_order_do_not_change_the_digest() {
        let reordered = VECTOR
            .replace(
                r#""labels":{"owner":"alice","stage":"post-pip-install"}"#,
                r#""labels" : { "stage" : "post-pip-install" ,
                    "owner":"alice" }"#,
            )
            .replace(',', " ,\n  ");
        assert_ne!(reordered, VECTOR);
        let p = Manifest::parse(reordered.as_bytes()).unwrap();
        assert_eq!(p.digest.to_string(), VECTOR_DIGEST);
    }

    fn rejects(mutate: impl FnOnce(&mut serde_json::Value), expect: &str) {
        let mut v = value();
        mutate(&mut v);
        let err = parse_value(&v).unwrap_err().to_string();
        assert!(err.contains(expect), "{err:?} lacks {expect:?}");
    }

    #[test]
    fn rejects_unknown_fields_everywhere() {
        rejects(|v| v["extra"] = 1.into(), "unknown field `extra`");
        rejects(|v| v["image"]["extra"] = 1.into(), "unknown field `extra`");
        rejects(|v| v["upper"]["extra"] = 1.into(), "unknown field `extra`");
        rejects(
            |v| v["upper"]["integrity"]["extra"] = 1.into(),
            "unknown field `extra`",
        );
    }

    #[test]
    fn rejects_missing_required_fields_even_nullable_ones() {
        for field in [
            "schema",
            "format",
            "fstype",
            "image",
            "parent",
            "created_at",
            "labels",
            "upper",
            "source_sandbox",
        ] {
            rejects(
                |v| {
                    v.as_object_mut().unwrap().remove(field);
                },
                &format!("missing field `{field}`"),
            );
        }
        rejects(
            |v| {
                v["upper"].as_object_mut().unwrap().remove("integrity");
            },
            "missing field `integrity`",
        );
        rejects(
            |v| {
                v["image"].as_object_mut().unwrap().remove("ref");
            },
            "missing field `ref`",
        );
    }

    #[test]
    fn rejects_each_bad_value() {
        rejects(|v| v["schema"] = 2.into(), "unsupported schema 2");
        rejects(|v| v["schema"] = "1".into(), "invalid type");
        rejects(|v| v["format"] = "vmdk".into(), "unknown variant `vmdk`");
        rejects(|v| v["fstype"] = "".into(), "fstype is empty");
        rejects(|v| v["image"]["ref"] = "".into(), "image.ref is empty");
        rejects(
            |v| v["image"]["manifest_digest"] = "sha256:abc".into(),
            "malformed digest",
        );
        rejects(|v| v["parent"] = "sha256:XYZ".into(), "malformed digest");
        rejects(|v| v["created_at"] = "yesterday".into(), "RFC 3339");
        rejects(
            |v| v["labels"] = serde_json::json!({"a": 1}),
            "invalid type",
        );
        rejects(|v| v["upper"]["size_bytes"] = (-1).into(), "invalid value");
        rejects(
            |v| v["upper"]["integrity"]["algorithm"] = "md5".into(),
            "unsupported integrity algorithm \"md5\"",
        );
        rejects(
            |v| v["upper"]["integrity"]["digest"] = "sha256:00".into(),
            "upper.integrity.digest",
        );
        for bad in ["../x", "a/b", ".", "..", "", "manifest.json", "/etc/passwd"] {
            rejects(|v| v["upper"]["file"] = bad.into(), "upper.file");
        }
    }

    #[test]
    fn accepts_null_nullable_fields() {
        let mut v = value();
        v["upper"]["integrity"] = serde_json::Value::Null;
        v["source_sandbox"] = serde_json::Value::Null;
        v["parent"] = VECTOR_DIGEST.into();
        let p = parse_value(&v).unwrap();
        assert_eq!(p.manifest.parent.unwrap().to_string(), VECTOR_DIGEST);
        assert!(p.manifest.upper.integrity.is_none());
    }

    #[test]
    fn refuses_duplicate_keys_at_every_level() {
        let dup = |from: &str, to: &str| {
            let doc = VECTOR.replacen(from, to, 1);
            assert_ne!(doc, VECTOR);
            Manifest::parse(doc.as_bytes()).unwrap_err().to_string()
        };
        assert!(
            dup(r#"{"schema":1,"#, r#"{"schema":1,"schema":1,"#)
                .contains("duplicate field `schema`")
        );
        assert!(
            dup(r#""fstype":"ext4","#, r#""fstype":"ext4","fstype":"xfs","#)
                .contains("duplicate field `fstype`")
        );
        assert!(
            dup(
                r#""file":"upper.ext4","#,
                r#""file":"upper.ext4","file":"x","#
            )
            .contains("duplicate field `file`")
        );
        let e = dup(
            r#""owner":"alice","#,
            r#""owner":"alice","owner":"mallory","#,
        );
        assert!(e.contains(r#"key "owner" appears twice in labels"#), "{e}");
    }

    #[test]
    fn refuses_control_characters_in_text_fields() {
        rejects(
            |v| v["labels"]["owner"] = "al\x1b[2Jice".into(),
            "field labels.owner holds a control character",
        );
        rejects(
            |v| v["labels"]["x\u{202e}y"] = "v".into(),
            "holds a control character",
        );
        rejects(
            |v| v["source_sandbox"] = "a\nb".into(),
            "field source_sandbox holds a control character",
        );
        rejects(
            |v| v["upper"]["file"] = "up\u{7f}per".into(),
            "field upper.file holds",
        );
        rejects(
            |v| v["image"]["ref"] = "python\u{9b}".into(),
            "field image.ref holds",
        );
        let mut v = value();
        v["labels"]["note"] = "a tab\tis refused".into();
        assert!(parse_value(&v).is_err());
        v["labels"]["note"] = "unicode is fine: é ✓".into();
        parse_value(&v).unwrap();
    }

    #[test]
    fn refuses_oversized_documents() {
        let big = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
        assert!(matches!(
            Manifest::parse(&big),
            Err(ManifestError::TooLarge(_))
        ));
    }
}
