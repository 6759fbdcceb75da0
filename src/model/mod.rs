//! The data model at the bottom: manifests, image metadata, digests, the
//! chunk list of a file, errors and how text from outside is quoted. These
//! modules import nothing from the crate but each other.

pub mod chunk;
pub mod digest;
pub(crate) mod error;
pub mod image;
pub mod manifest;
pub(crate) mod text;
