//! Snapshot signatures: OpenSSH's SSHSIG (`PROTOCOL.sshsig`), armored as
//! `ssh-keygen -Y sign` writes it, in the namespace [`NAMESPACE`], over the
//! message [`message`]: the snapshot digest as text. So
//! `printf %s sha256:… | ssh-keygen -Y verify -n msb-registry-snapshot …`
//! checks one with no msb-registry installed.

use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::model::digest::Digest;

/// The SSHSIG namespace of snapshot signatures. A signature made for git
/// (`git`) or for a file (`file`) is not one.
pub const NAMESPACE: &str = "msb-registry-snapshot";

/// The largest armored signature read (8 KiB; an ed25519 one is ~300 bytes,
/// an RSA-4096 one ~1 KiB).
pub const MAX_SIGNATURE_BYTES: u64 = 8 << 10;

/// The most signatures one snapshot may carry.
pub const MAX_SIGNATURES: usize = 16;

/// The largest private key file read (64 KiB).
pub const MAX_KEY_BYTES: u64 = 64 << 10;

/// The signed message of the snapshot `digest`: `sha256:<hex>`, no newline.
pub fn message(digest: &Digest) -> String {
    digest.to_string()
}

/// A parsed signature with what is needed to report and store it.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The armored text, exactly as `ssh-keygen -Y sign` writes it.
    pub armored: String,
    /// The signer's public key.
    pub key: PublicKey,
    /// Its `SHA256:<base64>` fingerprint.
    pub fingerprint: String,
    /// The namespace it was made in.
    pub namespace: String,
    parsed: SshSig,
}

impl Signature {
    /// Parse an armored signature (bounded by [`MAX_SIGNATURE_BYTES`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() as u64 > MAX_SIGNATURE_BYTES {
            return Err(format!(
                "{} bytes; the limit is {MAX_SIGNATURE_BYTES}",
                bytes.len()
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
        let parsed = SshSig::from_pem(text.trim_end())
            .map_err(|e| format!("not an armored SSH signature: {e}"))?;
        let key = PublicKey::from(parsed.public_key().clone());
        Ok(Signature {
            armored: text.to_string(),
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            namespace: parsed.namespace().to_string(),
            key,
            parsed,
        })
    }

    /// Check that this is a snapshot signature over `digest` by its key:
    /// our namespace, and a signature that verifies over the message.
    pub fn check(&self, digest: &Digest) -> Result<(), String> {
        if self.namespace != NAMESPACE {
            return Err(format!(
                "made for namespace {:?}, not {NAMESPACE:?}",
                self.namespace
            ));
        }
        self.key
            .verify(NAMESPACE, message(digest).as_bytes(), &self.parsed)
            .map_err(|e| {
                format!(
                    "does not verify over {digest} with key {}: {e}",
                    self.fingerprint
                )
            })
    }
}

/// Read an OpenSSH private key. Encrypted keys are refused: msb-registry
/// asks for no passphrase (sign with an unencrypted copy, or an agent-free
/// key kept for signing).
pub fn read_private_key(text: &[u8]) -> Result<PrivateKey, String> {
    let key =
        PrivateKey::from_openssh(text).map_err(|e| format!("not an OpenSSH private key: {e}"))?;
    if key.is_encrypted() {
        return Err(
            "the key is encrypted with a passphrase; msb-registry reads only unencrypted keys \
             (make an unencrypted copy with ssh-keygen -p -N '' on a private path)"
                .into(),
        );
    }
    Ok(key)
}

/// Sign the snapshot `digest` with `key`, as `ssh-keygen -Y sign -n
/// msb-registry-snapshot` would.
pub fn sign(key: &PrivateKey, digest: &Digest) -> Result<Signature, String> {
    let sig = key
        .sign(NAMESPACE, HashAlg::Sha512, message(digest).as_bytes())
        .map_err(|e| format!("cannot sign with a {} key: {e}", key.algorithm()))?;
    let armored = sig
        .to_pem(LineEnding::LF)
        .map_err(|e| format!("cannot encode the signature: {e}"))?;
    Signature::parse(format!("{}\n", armored.trim_end()).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PrivateKey {
        let seed = [7u8; 32];
        let pair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
        PrivateKey::from(pair)
    }

    #[test]
    fn signs_and_checks_over_the_digest_only() {
        let d = Digest::of(b"a");
        let s = sign(&key(), &d).unwrap();
        assert!(s.armored.starts_with("-----BEGIN SSH SIGNATURE-----\n"));
        assert!(s.armored.ends_with("-----END SSH SIGNATURE-----\n"));
        s.check(&d).unwrap();
        let other = Digest::of(b"b");
        assert!(s.check(&other).unwrap_err().contains("does not verify"));
        let again = Signature::parse(s.armored.as_bytes()).unwrap();
        again.check(&d).unwrap();
    }

    #[test]
    fn other_namespaces_and_garbage_are_refused() {
        let d = Digest::of(b"a");
        let git = key()
            .sign("git", HashAlg::Sha512, message(&d).as_bytes())
            .unwrap()
            .to_pem(LineEnding::LF)
            .unwrap();
        let s = Signature::parse(git.as_bytes()).unwrap();
        assert!(s.check(&d).unwrap_err().contains("namespace \"git\""));
        assert!(
            Signature::parse(b"hello")
                .unwrap_err()
                .contains("not an armored")
        );
        let big = vec![b'a'; MAX_SIGNATURE_BYTES as usize + 1];
        assert!(Signature::parse(&big).unwrap_err().contains("limit"));
    }
}
