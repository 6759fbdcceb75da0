//! The journals that make crash safety work (DESIGN §5): import leases,
//! journaled promotion, pending removals and renames, the registry lock, and the one
//! recovery pass that reads them all. This layer is handed a [`Layout`]
//! and a [`Db`]; it never reaches up for a `Registry`.
//!
//! [`Layout`]: crate::store::layout::Layout
//! [`Db`]: crate::db::Db

pub mod lease;
pub mod lock;
mod moves;
pub mod promote;
pub mod recovery;
pub mod removal;
pub mod renaming;

pub use lease::Lease;
pub use lock::RegistryLock;
pub use recovery::recover;
