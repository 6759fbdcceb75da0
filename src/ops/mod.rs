//! Operations: one module (or folder) per command, each owning its options
//! and its report. An operation works on an open [`registry::Registry`] and
//! reaches the disk only through the layers below it: `archive`, `journal`
//! and `remote`, then `db` and `store`, then `model` and `process`.

pub mod add;
pub mod add_many;
pub mod demo;
pub mod du;
pub mod export;
pub mod gc;
pub mod import;
pub mod install;
pub mod pull;
pub mod push;
pub mod quarantine;
pub mod query;
pub mod registry;
pub mod reindex;
pub mod remove;
pub mod rename;
pub mod repair;
pub mod sign;
pub mod verify;
