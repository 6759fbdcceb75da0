//! Content digests: the `sha256:<hex>` type, and the streaming hashers that
//! see a file as a logical byte stream of data and zero runs, so that holes
//! never have to be materialised to be hashed where the algorithm allows it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Granularity of zero detection, hole creation and the extents digest.
pub const BLOCK: usize = 4096;

/// A SHA-256 digest, written `sha256:` followed by 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed digest {0:?}: expected sha256: followed by 64 lowercase hex digits")]
pub struct DigestError(pub String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// The digest whose 32 bytes are `bytes` (a finished SHA-256).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// Its 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the algorithm prefix.
    pub fn hex(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push_str(self.hex_digits().as_str());
        out
    }

    /// The 64 lowercase hex digits on the stack: digests are written by
    /// the tens of thousands per import (rows, paths), so without the
    /// per-character iterator and allocation of [`hex::encode`].
    fn hex_digits(&self) -> HexDigits {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (pair, b) in out.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xf)];
        }
        HexDigits(out)
    }

    /// Parse 64 lowercase hex digits without the `sha256:` prefix.
    pub fn from_hex(hex_digits: &str) -> Result<Self, DigestError> {
        let err = || DigestError(hex_digits.to_string());
        if hex_digits.len() != 64 || !hex_digits.bytes().all(is_lower_hex) {
            return Err(err());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut out).map_err(|_| err())?;
        Ok(Digest(out))
    }

    /// The name of the archive directory of a snapshot: `sha256-` and 16 hex digits.
    pub fn archive_prefix(&self) -> String {
        format!("sha256-{}", &self.hex()[..16])
    }
}

/// True for `0-9a-f`.
pub fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, DigestError> {
        let hex_digits = s
            .strip_prefix("sha256:")
            .ok_or_else(|| DigestError(s.to_string()))?;
        Digest::from_hex(hex_digits).map_err(|_| DigestError(s.to_string()))
    }
}

/// 64 lowercase hex digits.
struct HexDigits([u8; 64]);

impl HexDigits {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        f.write_str(self.hex_digits().as_str())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl rusqlite::ToSql for Digest {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        let mut text = String::with_capacity(71);
        text.push_str("sha256:");
        text.push_str(self.hex_digits().as_str());
        Ok(rusqlite::types::ToSqlOutput::from(text))
    }
}

impl rusqlite::types::FromSql for Digest {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
}

/// A consumer of a file's logical bytes, fed in order as data and zero runs.
pub trait LogicalSink {
    /// The next `data.len()` logical bytes.
    fn data(&mut self, data: &[u8]);
    /// The next `len` logical bytes, all zero (a hole or a zero run).
    fn zeros(&mut self, len: u64);
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// A read-only buffer of zeros, for feeding holes to hashers and writers.
pub fn zero_buffer() -> &'static [u8] {
    &ZEROS
}

fn feed_zeros(hasher: &mut Sha256, mut len: u64) {
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// Plain SHA-256 of every logical byte (what `sha256sum` prints).
#[derive(Default, Clone)]
pub struct PlainSha256(Sha256);

impl PlainSha256 {
    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl LogicalSink for PlainSha256 {
    fn data(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn zeros(&mut self, len: u64) {
        feed_zeros(&mut self.0, len);
    }
}

/// `msb-sparse-sha256-v1`: SHA-256 over a tag, the apparent length (u64 LE),
/// then every logical byte with holes as zeros (DESIGN §1).
#[derive(Clone)]
pub struct SparseSha256V1(Sha256);

impl SparseSha256V1 {
    /// Start hashing a file of `len` logical bytes.
    pub fn new(len: u64) -> Self {
        let mut h = Sha256::new();
        h.update(b"msb-sparse-sha256-v1\0");
        h.update(len.to_le_bytes());
        SparseSha256V1(h)
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl LogicalSink for SparseSha256V1 {
    fn data(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn zeros(&mut self, len: u64) {
        feed_zeros(&mut self.0, len);
    }
}

/// The registry's own content digest, `msb-extents-sha256-v1`: SHA-256 over a
/// tag, the logical length (u64 LE), then for every 4 KiB block (by absolute
/// offset) that is not all zeros its offset (u64 LE) and its bytes (the last
/// block may be short).
///
/// Zero blocks contribute nothing, so the digest is the same for a file and
/// any sparse copy of it whatever its hole layout, and it costs time
/// proportional to the data, not the logical size: that is what lets export
/// verify a 4 GiB upper holding 8 MiB of data in the same pass that reads it.
#[derive(Clone)]
pub struct ExtentsSha256 {
    hasher: Sha256,
    len: u64,
    pos: u64,
    block: Box<[u8; BLOCK]>,
    filled: usize,
}

impl ExtentsSha256 {
    /// Start hashing a file of `len` logical bytes.
    pub fn new(len: u64) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"msb-extents-sha256-v1\0");
        hasher.update(len.to_le_bytes());
        ExtentsSha256 {
            hasher,
            len,
            pos: 0,
            block: Box::new([0; BLOCK]),
            filled: 0,
        }
    }

    fn block_start(&self) -> u64 {
        self.pos - self.filled as u64
    }

    fn emit(&mut self, offset: u64, bytes: &[u8]) {
        if bytes.iter().any(|&b| b != 0) {
            self.hasher.update(offset.to_le_bytes());
            self.hasher.update(bytes);
        }
    }

    fn flush_partial(&mut self) {
        if self.filled > 0 {
            let start = self.block_start();
            let block = std::mem::replace(&mut self.block, Box::new([0; BLOCK]));
            self.emit(start, &block[..self.filled]);
            self.block = block;
            self.filled = 0;
        }
    }

    /// The digest, and the number of logical bytes fed (callers compare it
    /// with the declared length).
    pub fn finish(mut self) -> (Digest, u64) {
        self.flush_partial();
        let fed = self.pos;
        debug_assert!(fed <= self.len || self.len == 0 || fed > 0);
        (Digest(self.hasher.finalize().into()), fed)
    }
}

impl LogicalSink for ExtentsSha256 {
    fn data(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.filled == 0 && data.len() >= BLOCK {
                let whole = data.len() / BLOCK * BLOCK;
                for chunk in data[..whole].chunks_exact(BLOCK) {
                    let offset = self.pos;
                    self.emit(offset, chunk);
                    self.pos += BLOCK as u64;
                }
                data = &data[whole..];
                continue;
            }
            let n = (BLOCK - self.filled).min(data.len());
            self.block[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            self.pos += n as u64;
            data = &data[n..];
            if self.filled == BLOCK {
                self.flush_partial();
            }
        }
    }

    fn zeros(&mut self, mut len: u64) {
        if self.filled > 0 {
            let n = ((BLOCK - self.filled) as u64).min(len) as usize;
            self.block[self.filled..self.filled + n].fill(0);
            self.filled += n;
            self.pos += n as u64;
            len -= n as u64;
            if self.filled == BLOCK {
                self.flush_partial();
            }
        }
        let whole = len / BLOCK as u64 * BLOCK as u64;
        self.pos += whole;
        len -= whole;
        if len > 0 {
            self.block[..len as usize].fill(0);
            self.filled = len as usize;
            self.pos += len;
        }
    }
}

/// Many sinks fed as one.
impl<A: LogicalSink, B: LogicalSink> LogicalSink for (A, B) {
    fn data(&mut self, data: &[u8]) {
        self.0.data(data);
        self.1.data(data);
    }
    fn zeros(&mut self, len: u64) {
        self.0.zeros(len);
        self.1.zeros(len);
    }
}

impl<A: LogicalSink> LogicalSink for Option<A> {
    fn data(&mut self, data: &[u8]) {
        if let Some(a) = self {
            a.data(data);
        }
    }
    fn zeros(&mut self, len: u64) {
        if let Some(a) = self {
            a.zeros(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let s = "sha256:72005520f25b0532f88e41a3bd3ad8d642189582f3784fcb22ec8eb1a7b8a589";
        let d: Digest = s.parse().unwrap();
        assert_eq!(d.to_string(), s);
        assert_eq!(d.archive_prefix(), "sha256-72005520f25b0532");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "sha256:",
            "sha512:72005520f25b0532f88e41a3bd3ad8d642189582f3784fcb22ec8eb1a7b8a589",
            "sha256:72005520F25B0532f88e41a3bd3ad8d642189582f3784fcb22ec8eb1a7b8a589",
            "sha256:72005520f25b0532f88e41a3bd3ad8d642189582f3784fcb22ec8eb1a7b8a58",
            "sha256:72005520f25b0532f88e41a3bd3ad8d642189582f3784fcb22ec8eb1a7b8a589a",
            "sha256:g2005520f25b0532f88e41a3bd3ad8d642189582f3784fcb22ec8eb1a7b8a589",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_matches_sha256_with_zero_runs() {
        let mut bytes = vec![7u8; 1000];
        bytes.extend(vec![0u8; 100_000]);
        bytes.extend(vec![9u8; 10]);
        let mut h = PlainSha256::default();
        h.data(&bytes[..1000]);
        h.zeros(100_000);
        h.data(&bytes[101_000..]);
        assert_eq!(h.finish(), Digest::of(&bytes));
    }

    #[test]
    fn sparse_v1_matches_definition() {
        let bytes = [1u8, 0, 0, 2];
        let mut expected = b"msb-sparse-sha256-v1\0".to_vec();
        expected.extend(4u64.to_le_bytes());
        expected.extend(bytes);
        let mut h = SparseSha256V1::new(4);
        h.data(&bytes[..1]);
        h.zeros(2);
        h.data(&bytes[3..]);
        assert_eq!(h.finish(), Digest::of(&expected));
    }

    fn extents_of(chunks: &[Result<Vec<u8>, u64>], len: u64) -> Digest {
        let mut h = ExtentsSha256::new(len);
        for c in chunks {
            match c {
                Ok(d) => h.data(d),
                Err(z) => h.zeros(*z),
            }
        }
        let (d, fed) = h.finish();
        assert_eq!(fed, len);
        d
    }

    #[test]
    fn extents_ignore_hole_layout() {
        let mut logical = vec![0u8; 3 * BLOCK + 100];
        logical[5] = 1;
        logical[2 * BLOCK + 7] = 3;
        logical[3 * BLOCK + 99] = 4;
        let len = logical.len() as u64;
        let dense = extents_of(&[Ok(logical.clone())], len);
        let holes = extents_of(
            &[
                Ok(logical[..10].to_vec()),
                Err(BLOCK as u64 * 2 - 10),
                Ok(logical[2 * BLOCK..].to_vec()),
            ],
            len,
        );
        let odd = extents_of(
            &[
                Ok(logical[..1].to_vec()),
                Ok(logical[1..5000].to_vec()),
                Err(3000),
                Ok(logical[8000..].to_vec()),
            ],
            len,
        );
        assert_eq!(dense, holes);
        assert_eq!(dense, odd);

        let mut expected = b"msb-extents-sha256-v1\0".to_vec();
        expected.extend(len.to_le_bytes());
        for (i, block) in logical.chunks(BLOCK).enumerate() {
            if block.iter().any(|&b| b != 0) {
                expected.extend(((i * BLOCK) as u64).to_le_bytes());
                expected.extend(block);
            }
        }
        assert_eq!(dense, Digest::of(&expected));
    }

    #[test]
    fn extents_see_a_flipped_byte() {
        let mut a = vec![5u8; 2 * BLOCK];
        let da = extents_of(&[Ok(a.clone())], a.len() as u64);
        a[BLOCK + 3] ^= 1;
        assert_ne!(da, extents_of(&[Ok(a.clone())], a.len() as u64));
    }
}
