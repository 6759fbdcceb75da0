//! OCI distribution registries as a place for snapshots (docs/oci.md):
//! references, credentials, the HTTP client and the OCI form of a
//! snapshot. Push and pull (the operations) are built on these.

pub mod client;
pub mod credentials;
pub mod deadline;
pub mod format;
pub mod holdings;
pub mod reference;
pub mod retry;
pub mod signatures;

pub use client::{Access, Client, ClientOptions, Notices};
pub use credentials::Credentials;
pub use reference::RemoteRef;
