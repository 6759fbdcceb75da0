//! The archive format (DESIGN §2): export and import of `.tar.zst` / tar
//! streams that interoperate with microsandbox's snapshot save/load.

pub mod check;
pub mod entry;
pub mod import;
pub mod stream;
