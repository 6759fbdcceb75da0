//! `sign` and `verify --signatures`, and the trust policy an import, add or
//! pull enforces (`--require-signed`, `--trust`, and the registry's own
//! `trust/require-signed`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::db::signatures::SignatureRow;
use crate::db::{self, SnapshotRow};
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::model::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::ops::registry::Registry;
use crate::store::files::read_limited;
use crate::store::layout::SnapshotName;
use crate::trust::allowed::{AllowedSigners, MAX_TRUST_BYTES};
use crate::trust::policy::{Candidate, Trust, enforce};
use crate::trust::sshsig::{
    self, MAX_KEY_BYTES, MAX_SIGNATURE_BYTES, MAX_SIGNATURES, NAMESPACE, Signature,
};

/// The longest principal `sign --principal` takes.
const MAX_PRINCIPAL_BYTES: usize = 256;

/// Which signatures a write requires.
#[derive(Debug, Clone, Default)]
pub struct TrustOptions {
    /// Refuse snapshots no allowed principal signed (`--require-signed`).
    pub require_signed: bool,
    /// The trust file (`--trust`); without it, the registry's
    /// `trust/allowed_signers`.
    pub trust: Option<PathBuf>,
}

/// What `sign` did.
#[derive(Debug, Clone, Serialize)]
pub struct SignReport {
    /// The signed snapshot.
    pub snapshot: Digest,
    /// Its name.
    pub name: String,
    /// The principal given with `--principal`.
    pub principal: Option<String>,
    /// `SHA256:<base64>` of the key.
    pub fingerprint: String,
    /// The SSHSIG namespace.
    pub namespace: String,
    /// The armored signature, as `ssh-keygen -Y verify -s` reads it.
    pub signature: String,
    /// False when this key had already signed the snapshot (kept as it was).
    pub added: bool,
}

/// One stored signature checked by `verify --signatures`.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureCheck {
    /// The signed snapshot.
    pub snapshot: Digest,
    /// Its name.
    pub name: String,
    /// `SHA256:<base64>` of the key.
    pub fingerprint: String,
    /// The principal recorded with it.
    pub principal: Option<String>,
    /// The principals the trust file allows for it (with `--trust`).
    pub trusted: Option<String>,
    /// What is wrong with it; null when it verifies (and is trusted).
    pub problem: Option<String>,
}

/// What `verify --signatures` found.
#[derive(Debug, Clone, Serialize)]
pub struct SignaturesReport {
    /// No problem anywhere.
    pub ok: bool,
    /// Every stored signature checked.
    pub signatures: Vec<SignatureCheck>,
    /// Manifests read to check the chains below signed snapshots, link by link.
    pub links_checked: usize,
    /// Broken links: a manifest on disk that does not hash to its row's
    /// digest or names another parent.
    pub chain_problems: Vec<String>,
}

/// A snapshot an import, add or pull brings, with the signatures it came with.
pub struct Arriving<'a> {
    /// Its digest, from its verified manifest.
    pub digest: Digest,
    /// Its parent's digest, from the same manifest.
    pub parent: Option<Digest>,
    /// Its signatures, each with the member or file it came from.
    pub signatures: &'a [(String, Signature)],
}

/// Check what arrives against the policy before anything is installed:
/// every signature is in our namespace and verifies over its snapshot's
/// digest (else refused, naming it), and every snapshot not already here
/// is covered by `trusts` ([`crate::trust::policy::enforce`]). Returns the
/// signature rows to record with the snapshots.
pub fn admit(
    conn: &rusqlite::Connection,
    trusts: &[Trust],
    arriving: &[Arriving],
) -> Result<Vec<SignatureRow>> {
    let now = db::now_unix();
    let mut rows = Vec::new();
    let mut owned = Vec::new();
    for a in arriving {
        for (source, s) in a.signatures {
            s.check(&a.digest)
                .map_err(|why| Error::signature(source, format!("{why}; nothing was installed")))?;
            rows.push(SignatureRow {
                snapshot: a.digest,
                fingerprint: s.fingerprint.clone(),
                principal: trusts
                    .iter()
                    .find_map(|t| t.signers.allow(&s.key, NAMESPACE, None, now).ok()),
                namespace: NAMESPACE.to_string(),
                signature: s.armored.clone(),
                created: now,
            });
        }
        if db::snapshots::snapshot_by_digest(conn, &a.digest)?.is_none() {
            owned.push((
                a.digest,
                a.parent,
                a.signatures
                    .iter()
                    .map(|(_, s)| s.clone())
                    .collect::<Vec<_>>(),
            ));
        }
    }
    let candidates: Vec<Candidate> = owned
        .iter()
        .map(|(digest, parent, signatures)| Candidate {
            digest: *digest,
            parent: *parent,
            signatures,
        })
        .collect();
    enforce(trusts, &candidates, now)?;
    Ok(rows)
}

/// Read the armored signature files `add --signature` names.
pub fn read_signature_files(paths: &[PathBuf]) -> Result<Vec<(String, Signature)>> {
    if paths.len() > MAX_SIGNATURES {
        return Err(Error::Usage(format!(
            "at most {MAX_SIGNATURES} signatures per snapshot"
        )));
    }
    let mut out: Vec<(String, Signature)> = Vec::new();
    for p in paths {
        let shown = p.display().to_string();
        let bytes = read_limited(p, MAX_SIGNATURE_BYTES)?.ok_or_else(|| {
            Error::signature(&shown, format!("larger than {MAX_SIGNATURE_BYTES} bytes"))
        })?;
        let s = Signature::parse(&bytes).map_err(|why| Error::signature(&shown, why))?;
        if out.iter().any(|(_, o)| o.fingerprint == s.fingerprint) {
            return Err(Error::signature(
                &shown,
                format!("a second signature by key {}", s.fingerprint),
            ));
        }
        out.push((shown, s));
    }
    Ok(out)
}

/// Read a trust file (OpenSSH allowed_signers, at most 1 MiB).
pub fn read_trust(path: &Path) -> Result<Trust> {
    let bytes = read_limited(path, MAX_TRUST_BYTES)?.ok_or_else(|| {
        Error::Usage(format!(
            "trust file {}: larger than {MAX_TRUST_BYTES} bytes",
            path.display()
        ))
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::Usage(format!("trust file {}: not UTF-8", path.display())))?;
    let signers = AllowedSigners::parse(&text)
        .map_err(|why| Error::Usage(format!("trust file {}: {why}", path.display())))?;
    Ok(Trust {
        path: path.to_path_buf(),
        signers,
    })
}

impl Registry {
    /// The trust files a write must satisfy: the registry's own when
    /// `trust/require-signed` exists, and with `require_signed` the one
    /// `--trust` names (else the registry's). Empty: nothing is required.
    pub fn trust_policy(&self, opts: &TrustOptions) -> Result<Vec<Trust>> {
        let own = self.layout().allowed_signers();
        let mut paths = Vec::new();
        if self.layout().require_signed().symlink_metadata().is_ok() {
            if own.symlink_metadata().is_err() {
                return Err(Error::signature(
                    own.display().to_string(),
                    "trust/require-signed is set but the trust file is missing; every write is refused until it exists",
                ));
            }
            paths.push(own.clone());
        }
        if opts.require_signed {
            match &opts.trust {
                Some(p) => paths.push(p.clone()),
                None if own.symlink_metadata().is_ok() => paths.push(own),
                None => {
                    return Err(Error::Usage(format!(
                        "--require-signed needs --trust FILE (this registry has no {})",
                        own.display()
                    )));
                }
            }
        } else if opts.trust.is_some() {
            return Err(Error::Usage("--trust is used with --require-signed".into()));
        }
        paths.dedup();
        paths.iter().map(|p| read_trust(p)).collect()
    }

    /// Sign a snapshot with an OpenSSH private key and record the signature.
    pub fn sign(
        &mut self,
        reference: &str,
        key: &Path,
        principal: Option<&str>,
    ) -> Result<SignReport> {
        if let Some(p) = principal {
            check_principal(p)?;
        }
        let row = self.resolve(reference)?;
        let text = read_limited(key, MAX_KEY_BYTES)?.ok_or_else(|| {
            Error::Usage(format!(
                "key {}: larger than {MAX_KEY_BYTES} bytes",
                key.display()
            ))
        })?;
        let private = sshsig::read_private_key(&text)
            .map_err(|why| Error::Usage(format!("key {}: {why}", key.display())))?;
        let signature = sshsig::sign(&private, &row.digest)
            .map_err(|why| Error::Usage(format!("key {}: {why}", key.display())))?;
        let record = SignatureRow {
            snapshot: row.digest,
            fingerprint: signature.fingerprint.clone(),
            principal: principal.map(str::to_string),
            namespace: NAMESPACE.to_string(),
            signature: signature.armored.clone(),
            created: db::now_unix(),
        };
        let tx = self.db_mut().write()?;
        let added = db::signatures::insert_signature(&tx, &record)?;
        tx.commit()?;
        Ok(SignReport {
            snapshot: row.digest,
            name: row.name,
            principal: record.principal,
            fingerprint: record.fingerprint,
            namespace: record.namespace,
            signature: record.signature,
            added,
        })
    }

    /// Check every stored signature (of `reference` only, when given): it
    /// parses, is in our namespace, verifies over its snapshot's digest, and
    /// with `trusts` is by a key each allows now; and the chain below each
    /// signed snapshot holds, link by link, on disk.
    pub fn verify_signatures(
        &self,
        reference: Option<&str>,
        trusts: &[Trust],
    ) -> Result<SignaturesReport> {
        let conn = self.db().conn();
        let rows = match reference {
            Some(r) => db::signatures::signatures_of(conn, &self.resolve(r)?.digest)?,
            None => db::signatures::all_signatures(conn)?,
        };
        let now = db::now_unix();
        let mut checks = Vec::new();
        let mut chain = ChainCheck::default();
        for row in rows {
            let snapshot =
                db::snapshots::snapshot_by_digest(conn, &row.snapshot)?.ok_or_else(|| {
                    Error::integrity(row.snapshot.to_string(), "signature without its snapshot")
                })?;
            chain.walk(self, &snapshot)?;
            checks.push(check_stored(&row, &snapshot.name, trusts, now));
        }
        Ok(SignaturesReport {
            ok: checks.iter().all(|c| c.problem.is_none()) && chain.problems.is_empty(),
            signatures: checks,
            links_checked: chain.seen.len(),
            chain_problems: chain.problems,
        })
    }
}

/// One stored signature against its snapshot and the trust files.
fn check_stored(row: &SignatureRow, name: &str, trusts: &[Trust], now: i64) -> SignatureCheck {
    let mut check = SignatureCheck {
        snapshot: row.snapshot,
        name: name.to_string(),
        fingerprint: row.fingerprint.clone(),
        principal: row.principal.clone(),
        trusted: None,
        problem: None,
    };
    let verdict = Signature::parse(row.signature.as_bytes()).and_then(|s| {
        s.check(&row.snapshot)?;
        if s.fingerprint != row.fingerprint {
            return Err(format!(
                "is by key {}, the row records {}",
                s.fingerprint, row.fingerprint
            ));
        }
        let mut allowed = Vec::new();
        for t in trusts {
            let p = t
                .signers
                .allow(&s.key, NAMESPACE, None, now)
                .map_err(|why| format!("not trusted by {}: {why}", t.path.display()))?;
            allowed.push(p);
        }
        Ok(allowed)
    });
    match verdict {
        Ok(allowed) if !allowed.is_empty() => check.trusted = Some(allowed.join("; ")),
        Ok(_) => {}
        Err(why) => check.problem = Some(why),
    }
    check
}

/// The chains below signed snapshots, each manifest read once.
#[derive(Default)]
struct ChainCheck {
    seen: HashSet<Digest>,
    problems: Vec<String>,
}

impl ChainCheck {
    /// Walk from `head` to the root (or the first ancestor absent here),
    /// checking that each manifest on disk hashes to its row's digest and
    /// names the parent the row records.
    fn walk(&mut self, registry: &Registry, head: &SnapshotRow) -> Result<()> {
        let conn = registry.db().conn();
        let mut current = Some(head.clone());
        while let Some(row) = current.take() {
            if !self.seen.insert(row.digest) {
                return Ok(());
            }
            match manifest_on_disk(registry, &row) {
                Ok(m) if m.parent == row.parent => {}
                Ok(_) => self.problems.push(format!(
                    "{} ({}): its manifest names another parent than the index records",
                    row.name, row.digest
                )),
                Err(why) => self
                    .problems
                    .push(format!("{} ({}): {why}", row.name, row.digest)),
            }
            if let Some(parent) = row.parent {
                current = db::snapshots::snapshot_by_digest(conn, &parent)?;
            }
        }
        Ok(())
    }
}

/// The manifest of `row` as its directory holds it, checked against the
/// row's digest.
fn manifest_on_disk(
    registry: &Registry,
    row: &SnapshotRow,
) -> std::result::Result<Manifest, String> {
    let name: SnapshotName = row.name.parse().map_err(|e: Error| e.to_string())?;
    let path = registry.layout().snapshot_file(&name, "manifest.json");
    let bytes = read_limited(&path, MAX_MANIFEST_BYTES)
        .map_err(|e| e.with_causes())?
        .ok_or("manifest.json is larger than 1 MiB")?;
    let parsed = Manifest::parse(&bytes).map_err(|e| format!("manifest.json: {e}"))?;
    if parsed.digest != row.digest {
        return Err(format!(
            "manifest.json hashes to {}, not to its digest",
            parsed.digest
        ));
    }
    Ok(parsed.manifest)
}

/// A principal as allowed_signers can list it: no spaces, commas, quotes
/// or control characters, at most 256 bytes.
fn check_principal(p: &str) -> Result<()> {
    let bad = p.is_empty()
        || p.len() > MAX_PRINCIPAL_BYTES
        || p.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, ',' | '"' | '*' | '?' | '!')
        });
    if bad {
        return Err(Error::Usage(format!(
            "invalid principal {p:?}: 1-{MAX_PRINCIPAL_BYTES} bytes without spaces, commas, quotes, wildcards or control characters"
        )));
    }
    Ok(())
}
