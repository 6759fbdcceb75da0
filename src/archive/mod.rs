//! The archive format (DESIGN §2): the member grammar, the tar reader and
//! writer, and the checks that import and export (in `ops`) run over the
//! `.tar.zst` / tar streams microsandbox's snapshot save/load also reads.

pub mod check;
pub mod entry;
pub mod export_stream;
pub mod import_source;
pub mod names;
pub mod streamed;
pub mod tar;
pub mod tar_reader;

pub use import_source::OpenedSource;
pub use tar_reader::{Chunk, ReadError, TarReader};

#[cfg(test)]
mod tar_grammar_tests;
