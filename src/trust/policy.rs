//! The trust policy: which snapshots an operation may install. A snapshot
//! is covered when one of its signatures is by a key a trust file allows
//! (for our namespace, now), or when a covered snapshot of the same
//! operation descends from it: a signature is over the digest of a
//! manifest that names its parent's digest, so it covers the whole chain
//! below it, link by link, as a signed git commit covers its history.

use std::path::PathBuf;

use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::trust::allowed::AllowedSigners;
use crate::trust::sshsig::{NAMESPACE, Signature};

/// One trust file, read.
#[derive(Debug, Clone)]
pub struct Trust {
    /// Where it was read from, for messages.
    pub path: PathBuf,
    /// Its keys.
    pub signers: AllowedSigners,
}

/// A snapshot an operation is about to install, as the policy sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// Its digest.
    pub digest: Digest,
    /// Its parent's digest, from its (verified) manifest.
    pub parent: Option<Digest>,
    /// The signatures it carries, each already checked over `digest`.
    pub signatures: &'a [Signature],
}

/// Check `candidates` (parents first) against every trust in `trusts`: each
/// must cover every candidate. Returns, per candidate, the principals each
/// trust matched on its own signatures (empty when only a descendant's
/// signature covers it). The refusal names the first snapshot left
/// uncovered and why each of its signatures did not count.
pub fn enforce(trusts: &[Trust], candidates: &[Candidate], now: i64) -> Result<Vec<Vec<String>>> {
    let mut principals = vec![Vec::new(); candidates.len()];
    for trust in trusts {
        let mut covered = vec![false; candidates.len()];
        let mut reasons = vec![Vec::new(); candidates.len()];
        for (i, c) in candidates.iter().enumerate() {
            for s in c.signatures {
                match trust.signers.allow(&s.key, NAMESPACE, None, now) {
                    Ok(p) => {
                        covered[i] = true;
                        if !principals[i].contains(&p) {
                            principals[i].push(p);
                        }
                    }
                    Err(why) => {
                        reasons[i].push(format!("the signature by {}: {why}", s.fingerprint))
                    }
                }
            }
        }
        for i in (0..candidates.len()).rev() {
            if covered[i]
                && let Some(parent) = candidates[i].parent
                && let Some(j) = candidates[..i].iter().rposition(|c| c.digest == parent)
            {
                covered[j] = true;
            }
        }
        if let Some(i) = covered.iter().position(|c| !c) {
            let why = if reasons[i].is_empty() {
                "it is not signed".to_string()
            } else {
                reasons[i].join("; ")
            };
            return Err(Error::signature(
                candidates[i].digest.to_string(),
                format!(
                    "no valid signature by a principal {} allows, and no signed descendant covers it: {why}",
                    trust.path.display()
                ),
            ));
        }
    }
    Ok(principals)
}
