//! How many bytes of holes one import may hash. An upper's integrity
//! (`sha256`, `msb-sparse-sha256-v1`) covers every logical byte, holes
//! included, and SHA-256 is serial: a hole costs as much CPU as data
//! (about 0.8-1.5 GB/s), yet costs the sender nothing, since a sparse
//! header of a few hundred bytes can claim a terabyte of it. So the holes
//! hashed in one import are bounded by a budget that grows with what the
//! sender actually sent: a fixed allowance (default 64 GiB, enough for any
//! fresh 64 GiB disk) plus 4,096 bytes per byte of the archive read from
//! its source (compressed bytes, so a zstd stream of zeros earns no more
//! than its size). Real uppers hold far more than 1/4,096 of data (an
//! ext4's metadata alone is more), so an honest archive never meets it;
//! an archive of A bytes costs at most (64 GiB + 4,096 A) of hashing.
//!
//! The budget is charged at each upper's header, where the hole bytes are
//! known (logical size minus stored size), before any of them is hashed.
//! Data, even zeros, is not charged: each of its bytes came through the
//! source, compressed at most about 32,768:1 by zstd.

use crate::model::error::{Error, Result};

/// The fixed part of the budget unless `import --max-hole-bytes` sets it: 64 GiB.
pub const DEFAULT_FREE_HOLE_BYTES: u64 = 64 << 30;

/// Hole bytes allowed per byte of archive read from the source.
pub const HOLE_BYTES_PER_ARCHIVE_BYTE: u64 = 4096;

/// The hole bytes an import has hashed, against its budget.
#[derive(Debug, Clone)]
pub struct HoleBudget {
    free: u64,
    spent: u64,
}

impl HoleBudget {
    /// A budget with `free` hole bytes before any archive byte is read.
    pub fn new(free: u64) -> Self {
        HoleBudget { free, spent: 0 }
    }

    /// The budget once `source_bytes` of the archive have been read.
    pub fn limit(&self, source_bytes: u64) -> u64 {
        self.free
            .saturating_add(source_bytes.saturating_mul(HOLE_BYTES_PER_ARCHIVE_BYTE))
    }

    /// Charge `holes` bytes of `member` (an upper with a recorded
    /// integrity), refused when the total would pass the budget.
    pub fn charge(&mut self, member: &str, holes: u64, source_bytes: u64) -> Result<()> {
        let spent = self.spent.saturating_add(holes);
        let limit = self.limit(source_bytes);
        if spent > limit {
            return Err(Error::rejected(
                member,
                format!(
                    "its {holes} bytes of holes would take the holes this import hashes for \
                     integrity to {spent} bytes, over its budget of {limit} ({} free + \
                     {HOLE_BYTES_PER_ARCHIVE_BYTE} per archive byte read, {source_bytes} so far); \
                     import --max-hole-bytes BYTES raises the free part",
                    self.free
                ),
            ));
        }
        self.spent = spent;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_grows_with_the_archive_and_is_spent_across_members() {
        let mut b = HoleBudget::new(1000);
        b.charge("a", 1000, 0).unwrap();
        let e = b.charge("b", 1, 0).unwrap_err().to_string();
        assert!(e.contains("b: its 1 bytes of holes"), "{e}");
        assert!(e.contains("to 1001 bytes, over its budget of 1000"), "{e}");
        b.charge("b", 4096, 1).unwrap();
        assert!(b.charge("c", 1, 1).is_err());
        assert_eq!(HoleBudget::new(u64::MAX).limit(u64::MAX), u64::MAX);
    }
}
