//! Storage primitives beside the index (`db`): the registry's on-disk
//! layout, file I/O (sparse reads and writes, hashing passes), staging of a
//! snapshot's files, names that belong to others, and a microsandbox home.
//! Nothing here knows about commands, archives or registries.

pub mod files;
pub mod foreign;
pub mod layout;
pub mod pipeline;
pub mod quarantine;
pub mod shared_home;
pub mod stage;
pub mod staged;
