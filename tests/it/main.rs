//! Integration tests: the real `msb-registry` binary against temporary
//! registries, plus library-level checks. One binary, one module per area.

mod chunks;
mod core;
mod crash;
mod demo;
mod diskfull;
mod export;
mod gc;
mod import;
mod mutate;
mod roundtrip;
mod soak;
mod tarcraft;
mod util;
