//! A bound on the bytes a transfer holds in memory at once: each pack
//! being built or sent, each range being received, takes its size from
//! the budget first and gives it back when done. `--jobs` bounds requests;
//! this bounds memory, whatever `--jobs` says.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes in flight at most for a pull (ranges held in memory at once).
pub const MAX_IN_FLIGHT_BYTES: u64 = 16 << 20;

/// Bytes in flight at most for a push (packs being built or sent, and the
/// bases their deltas are made against). Packs are up to 4 MiB before
/// compression, so 16 MiB let about three be in flight and the next one
/// wait to be compressed while they were sent; 24 MiB keeps the registry
/// busy on two cores (push ÷ bare upload 1.19–1.23 → 1.12–1.16 in the
/// same runs) at a peak RSS of about 50 MiB.
pub const PUSH_IN_FLIGHT_BYTES: u64 = 24 << 20;

/// The unit the budget counts in.
const UNIT: u64 = 64 << 10;

/// A shared budget of bytes in flight.
#[derive(Clone)]
pub struct ByteBudget {
    units: Arc<Semaphore>,
    total: u32,
}

/// Bytes taken from a [`ByteBudget`], given back when dropped.
pub struct Taken {
    permit: OwnedSemaphorePermit,
}

impl ByteBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> ByteBudget {
        let total = bytes.div_ceil(UNIT).max(1) as u32;
        ByteBudget {
            units: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Wait until `bytes` are free, and take them (all of the budget, for
    /// more than it holds: one such transfer at a time).
    pub async fn take(&self, bytes: u64) -> Taken {
        let units = (bytes.div_ceil(UNIT).max(1)).min(self.total as u64) as u32;
        let permit = self
            .units
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the budget's semaphore is never closed");
        Taken { permit }
    }
}

impl Taken {
    /// Give back what is taken beyond `bytes`, now that the size is known.
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = bytes.div_ceil(UNIT).max(1) as usize;
        if keep < self.permit.num_permits() {
            drop(self.permit.split(self.permit.num_permits() - keep));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_taken_is_given_back_and_a_large_take_waits_for_all() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let budget = ByteBudget::new(1 << 20);
            let mut a = budget.take(600 << 10).await;
            assert_eq!(budget.units.available_permits(), 16 - 10);
            a.shrink_to(100);
            assert_eq!(budget.units.available_permits(), 15);
            drop(a);
            let b = budget.take(u64::MAX).await.permit.num_permits();
            assert_eq!(b, 16, "capped at the whole budget: one at a time");
        });
    }
}
