//! msb-registry: an embedded-SQLite registry for microsandbox VM disk
//! snapshots. [`Registry`] is the public API; every command of the binary
//! is one of its operations returning a serializable report.

pub mod add;
pub mod archive;
pub mod chunk;
pub mod cli;
pub mod db;
pub mod demo;
pub mod digest;
pub mod du;
pub mod error;
pub mod failpoint;
pub mod files;
pub mod gc;
pub mod image;
pub mod install;
pub mod layout;
pub mod lease;
pub mod manifest;
pub mod progress;
pub mod promote;
pub mod query;
pub mod registry;
pub mod reindex;
pub mod remove;
pub mod sample;
pub mod stage;
pub mod verify;

pub use error::{Error, Result};
pub use registry::Registry;
