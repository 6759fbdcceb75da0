//! Integration tests: the real `msb-registry` binary against temporary
//! registries, plus library-level checks. One binary, one module per area.

mod core;
mod crash;
mod demo;
mod diskfull;
mod everyday;
mod export;
mod gc;
mod home;
mod import;
mod layers;
mod mutate;
mod roundtrip;
mod soak;
mod tarcraft;
mod util;
