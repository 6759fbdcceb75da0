//! The renames of a promotion, forward and back: shared by [`super::promote`]
//! and by recovery, which undoes the renames of a promotion that died.

use crate::db::imports::Move;
use crate::model::error::{IoContext, Result};
use crate::process::failpoint;
use crate::store::files::fsync_dir;
use crate::store::layout::Layout;

/// Rename every staged path to its target, then fsync the target directories.
pub(super) fn rename_all(layout: &Layout, moves: &[Move]) -> Result<()> {
    let mut dirs = Vec::new();
    for m in moves {
        let from = layout.resolve(&m.staged);
        let to = layout.resolve(&m.target);
        std::fs::rename(&from, &to).at("rename", &from)?;
        failpoint::hit(failpoint::PROMOTE_RENAME)?;
        if let Some(parent) = to.parent()
            && !dirs.contains(&parent.to_path_buf())
        {
            dirs.push(parent.to_path_buf());
        }
    }
    for d in dirs {
        fsync_dir(&d)?;
    }
    Ok(())
}

/// Put back, in reverse, every move whose target exists and whose staged
/// path does not: exactly the renames this promotion made.
pub(super) fn undo(layout: &Layout, moves: &[Move]) -> Result<()> {
    for m in moves.iter().rev() {
        let staged = layout.resolve(&m.staged);
        let target = layout.resolve(&m.target);
        if target.symlink_metadata().is_ok() && staged.symlink_metadata().is_err() {
            std::fs::rename(&target, &staged).at("rename back", &target)?;
        }
    }
    Ok(())
}
