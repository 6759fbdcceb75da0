//! Chunks (DESIGN §8): every snapshot file cut at fixed, aligned offsets
//! into chunks of one size, each named by the SHA-256 of its bytes. A chunk
//! that is all zeros is a hole and is not listed. [`ChunkSink`] computes a
//! file's chunk list from the same stream of data and zero runs the other
//! digests are fed, so intake reads each byte once.

use serde::Serialize;

use crate::model::digest::{Digest, LogicalSink, PlainSha256};

/// The registry's chunk size: 128 KiB, chosen by `cargo bench --bench chunks`
/// (docs/chunks.md). Recorded per file, so it can change later.
pub const CHUNK_SIZE: u64 = 128 * 1024;

/// One data chunk of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Chunk {
    /// Offset in the file, a multiple of the chunk size.
    pub offset: u64,
    /// Bytes; the chunk size except for the file's last chunk.
    pub length: u64,
    /// SHA-256 of the chunk's bytes.
    pub digest: Digest,
}

/// A file's chunk list: its data chunks by offset; offsets not listed are holes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChunkList {
    /// The size the file was cut at.
    pub chunk_size: u64,
    /// Data chunks, by offset.
    pub chunks: Vec<Chunk>,
}

impl ChunkList {
    /// Bytes in data chunks.
    pub fn data_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.length).sum()
    }
}

/// Cuts a logical byte stream into chunks and hashes the ones holding data.
///
/// Zeros are only hashed when data follows them in the same chunk, so a
/// hole costs nothing however large it is.
pub struct ChunkSink {
    size: u64,
    pos: u64,
    hasher: Option<PlainSha256>,
    pending_zeros: u64,
    chunks: Vec<Chunk>,
}

impl ChunkSink {
    /// Cut at [`CHUNK_SIZE`].
    pub fn new() -> Self {
        Self::with_size(CHUNK_SIZE)
    }

    /// Cut at `size` bytes (> 0).
    pub fn with_size(size: u64) -> Self {
        assert!(size > 0, "chunk size must be positive");
        ChunkSink {
            size,
            pos: 0,
            hasher: None,
            pending_zeros: 0,
            chunks: Vec::new(),
        }
    }

    fn room(&self) -> u64 {
        self.size - self.pos % self.size
    }

    fn close(&mut self) {
        let start = (self.pos - 1) / self.size * self.size;
        if let Some(mut h) = self.hasher.take() {
            h.zeros(self.pending_zeros);
            self.chunks.push(Chunk {
                offset: start,
                length: self.pos - start,
                digest: h.finish(),
            });
        }
        self.pending_zeros = 0;
    }

    /// The chunk list of everything fed.
    pub fn finish(mut self) -> ChunkList {
        if !self.pos.is_multiple_of(self.size) {
            self.close();
        }
        ChunkList {
            chunk_size: self.size,
            chunks: self.chunks,
        }
    }
}

impl Default for ChunkSink {
    fn default() -> Self {
        Self::new()
    }
}

impl LogicalSink for ChunkSink {
    fn data(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = (self.room().min(data.len() as u64)) as usize;
            let (segment, rest) = data.split_at(n);
            if is_zero(segment) {
                self.pending_zeros += n as u64;
            } else {
                let h = self.hasher.get_or_insert_with(PlainSha256::default);
                h.zeros(self.pending_zeros);
                self.pending_zeros = 0;
                h.data(segment);
            }
            self.pos += n as u64;
            if self.pos.is_multiple_of(self.size) {
                self.close();
            }
            data = rest;
        }
    }

    fn zeros(&mut self, mut len: u64) {
        while len > 0 {
            let n = self.room().min(len);
            if self.hasher.is_none() && n == self.size {
                let whole = len / self.size * self.size;
                self.pos += whole;
                len -= whole;
                continue;
            }
            self.pending_zeros += n;
            self.pos += n;
            len -= n;
            if self.pos.is_multiple_of(self.size) {
                self.close();
            }
        }
    }
}

/// True when every byte is zero.
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(64);
    let whole = words.by_ref().all(|c| {
        c.chunks_exact(16).fold(0u128, |acc, w| {
            acc | u128::from_ne_bytes(w.try_into().expect("16 bytes"))
        }) == 0
    });
    whole && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(bytes: &[u8], size: usize) -> Vec<Chunk> {
        bytes
            .chunks(size)
            .enumerate()
            .filter(|(_, c)| c.iter().any(|&b| b != 0))
            .map(|(i, c)| Chunk {
                offset: (i * size) as u64,
                length: c.len() as u64,
                digest: Digest::of(c),
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_whatever_the_piece_layout() {
        let size = 4096usize;
        let mut bytes = vec![0u8; 10 * size + 123];
        bytes[5] = 1;
        bytes[3 * size + 100..3 * size + 200].fill(7);
        bytes[4 * size - 1] = 9;
        bytes[10 * size + 122] = 3;
        let expected = reference(&bytes, size);
        assert_eq!(expected.len(), 3);
        assert_eq!(expected.last().unwrap().length, 123);

        let dense = {
            let mut s = ChunkSink::with_size(size as u64);
            s.data(&bytes);
            s.finish()
        };
        assert_eq!(dense.chunks, expected);
        assert_eq!(dense.chunk_size, size as u64);

        let mut s = ChunkSink::with_size(size as u64);
        s.data(&bytes[..6]);
        s.zeros((3 * size + 100 - 6) as u64);
        s.data(&bytes[3 * size + 100..3 * size + 150]);
        s.data(&bytes[3 * size + 150..5 * size]);
        s.zeros((5 * size) as u64);
        s.data(&bytes[10 * size..]);
        assert_eq!(s.finish().chunks, expected);
    }

    #[test]
    fn a_zero_chunk_given_as_data_is_a_hole() {
        let mut s = ChunkSink::with_size(8);
        s.data(&[0; 16]);
        s.data(&[1, 0, 0]);
        s.zeros(5);
        let list = s.finish();
        assert_eq!(list.chunks.len(), 1);
        assert_eq!(list.chunks[0].offset, 16);
        assert_eq!(list.chunks[0].digest, Digest::of(&[1, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(list.data_bytes(), 8);
    }

    #[test]
    fn a_huge_hole_costs_no_chunks() {
        let mut s = ChunkSink::new();
        s.zeros(1 << 40);
        s.data(b"x");
        let list = s.finish();
        assert_eq!(list.chunks.len(), 1);
        assert_eq!(list.chunks[0].offset, 1 << 40);
        assert_eq!(list.chunks[0].length, 1);
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 100]));
        let mut v = vec![0u8; 100];
        v[99] = 1;
        assert!(!is_zero(&v));
        v[99] = 0;
        v[0] = 1;
        assert!(!is_zero(&v));
    }
}
