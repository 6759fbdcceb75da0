//! Integration tests: the real `msb-registry` binary against temporary
//! registries, plus library-level checks. One binary, one module per area.

mod archives;
mod chaos;
mod chunks;
mod core;
mod corpus;
mod crash;
mod damage;
mod demo;
mod differential;
mod diskfull;
mod docs;
mod everyday;
mod everyday2;
mod export;
mod failclosed;
mod forms;
mod gc;
mod hardening;
mod home;
mod import_hostile;
mod import_ok;
mod layers;
mod mutate;
mod oci;
mod oci_auth;
mod oci_fake;
mod oci_hostile;
mod ociutil;
mod reader;
mod reports;
mod roundtrip;
mod soak;
mod tarcraft;
mod util;
