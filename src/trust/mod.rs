//! Signatures and trust: the SSHSIG format of a snapshot signature
//! ([`sshsig`]), the `allowed_signers` trust file ([`allowed`]) and the
//! policy that decides which snapshots an operation may install
//! ([`policy`]). Formats only: reading the files and storing rows belong
//! to the layers below and above.

pub mod allowed;
pub mod policy;
pub mod sshsig;
