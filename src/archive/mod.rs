//! The archive format (DESIGN §2): export and import of `.tar.zst` / tar
//! streams that interoperate with microsandbox's snapshot save/load.

pub mod check;
pub mod entry;
pub mod export;
pub mod export_plan;
pub mod export_stream;
pub mod import;
pub mod import_source;
pub mod names;
pub mod streamed;
pub mod tar;
pub mod tar_reader;

pub use export::{Compression, ExportOptions, ExportReport, ExportTarget};
pub use export_plan::Selection;
pub use import::{ImportOptions, ImportReport, ImportSource};
pub use import_source::OpenedSource;
pub use tar_reader::{Chunk, ReadError, TarReader};
