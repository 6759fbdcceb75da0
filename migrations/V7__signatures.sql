-- Signed snapshots (README "Signing and trust"): SSHSIG signatures over a
-- snapshot's digest. A signature row never outlives its snapshot.
CREATE TABLE signatures (
    snapshot    TEXT NOT NULL REFERENCES snapshots(digest) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,      -- 'SHA256:<base64>' of the signing key
    principal   TEXT,               -- who signed: sign --principal, or the principals a trust file matched
    namespace   TEXT NOT NULL,      -- SSHSIG namespace: 'msb-registry-snapshot'
    signature   TEXT NOT NULL,      -- armored SSHSIG, as ssh-keygen -Y sign writes it
    created     INTEGER NOT NULL,   -- Unix seconds when it entered this registry
    PRIMARY KEY (snapshot, fingerprint)
) STRICT, WITHOUT ROWID;
