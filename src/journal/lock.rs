//! The exclusive registry lock: an flock on `registry.lock` that every
//! writer (promotion, recovery, gc, rm, reindex) holds while it changes
//! files and rows together.

use std::fs::File;

use crate::error::{IoContext, Result};
use crate::layout::Layout;

/// The exclusive registry lock; released on drop.
pub struct RegistryLock(#[allow(dead_code)] File);

/// Take the exclusive registry lock of `layout`, waiting for the current holder.
pub fn lock_exclusive(layout: &Layout) -> Result<RegistryLock> {
    let path = layout.lock_file();
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .at("open", &path)?;
    file.lock().at("lock", &path)?;
    Ok(RegistryLock(file))
}
